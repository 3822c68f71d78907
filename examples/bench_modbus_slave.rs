//! A Modbus TCP slave for the memory figure of `scripts/bench.sh`: every
//! unit answers reads of holding registers 0..N with values that change on
//! every read, so that no point of the gateway is ever left out by a
//! deadband. It prints `port=P` once it listens, and serves until killed.
//!
//! ```sh
//! cargo run --release --example bench_modbus_slave -- --port 0
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use clap::Parser;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;

#[derive(Parser)]
struct Args {
    /// 0: a free port.
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[derive(Clone)]
struct Answer(Arc<AtomicU16>);

impl Service for Answer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let tick = self.0.fetch_add(1, Ordering::Relaxed);
        let result = match req.request {
            Request::ReadHoldingRegisters(address, count) => {
                Ok(Some(Response::ReadHoldingRegisters(
                    (0..count)
                        .map(|i| tick.wrapping_add(address.wrapping_add(i)))
                        .collect(),
                )))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(async move { result })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    println!("port={}", listener.local_addr()?.port());
    let service = Answer(Arc::new(AtomicU16::new(0)));
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream, addr| {
        let service = service.clone();
        async move {
            tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, |_| {
                Ok(Some(service.clone()))
            })
        }
    };
    server
        .serve(&on_connected, |e| eprintln!("bench_modbus_slave: {e}"))
        .await?;
    Ok(())
}
