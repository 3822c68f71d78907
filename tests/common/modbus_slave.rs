//! A Modbus slave for tests, served by tokio-modbus on its own runtime: it
//! keeps its data tables and counts every request it answers, so tests can
//! check what the gateway asked for and wrote.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::Service;

// ---- the test slave ---------------------------------------------------------------------------

/// The data tables of one unit.
#[derive(Default, Clone)]
pub struct Tables {
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    pub coils: BTreeMap<u16, bool>,
    pub discrete: BTreeMap<u16, bool>,
}

impl Tables {
    pub fn holding(mut self, address: u16, words: &[u16]) -> Tables {
        for (i, w) in words.iter().enumerate() {
            self.holding.insert(address + i as u16, *w);
        }
        self
    }
}

/// One request the slave saw: unit, function code, address, count, when.
#[derive(Debug, Clone)]
pub struct Seen {
    pub unit: u8,
    pub function: u8,
    pub address: u16,
    pub count: u16,
    pub at: Instant,
}

#[derive(Default)]
pub struct State {
    /// Units that answer; any other unit id is silent.
    pub units: HashMap<u8, Tables>,
    /// Answer every request of this unit with an exception.
    pub refuse: HashMap<u8, ExceptionCode>,
    /// Answer writes this much later (a slow device).
    pub write_delay: Option<std::time::Duration>,
    pub seen: Vec<Seen>,
}

fn range<T: Copy>(
    table: &BTreeMap<u16, T>,
    address: u16,
    count: u16,
) -> Result<Vec<T>, ExceptionCode> {
    (0..count)
        .map(|i| {
            let at = address
                .checked_add(i)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            table
                .get(&at)
                .copied()
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

fn write<T: Copy>(
    table: &mut BTreeMap<u16, T>,
    address: u16,
    values: &[T],
) -> Result<(), ExceptionCode> {
    range(table, address, values.len() as u16)?;
    for (i, v) in values.iter().enumerate() {
        table.insert(address + i as u16, *v);
    }
    Ok(())
}

impl State {
    fn answer(
        &mut self,
        unit: u8,
        request: Request<'static>,
    ) -> Result<Option<Response>, ExceptionCode> {
        let (function, address, count) = match &request {
            Request::ReadCoils(a, n) => (1, *a, *n),
            Request::ReadDiscreteInputs(a, n) => (2, *a, *n),
            Request::ReadHoldingRegisters(a, n) => (3, *a, *n),
            Request::ReadInputRegisters(a, n) => (4, *a, *n),
            Request::WriteSingleCoil(a, _) => (5, *a, 1),
            Request::WriteSingleRegister(a, _) => (6, *a, 1),
            Request::WriteMultipleCoils(a, v) => (15, *a, v.len() as u16),
            Request::WriteMultipleRegisters(a, v) => (16, *a, v.len() as u16),
            _ => (0, 0, 0),
        };
        let at = Instant::now();
        self.seen.push(Seen {
            unit,
            function,
            address,
            count,
            at,
        });
        if let Some(code) = self.refuse.get(&unit) {
            return Err(*code);
        }
        let Some(t) = self.units.get_mut(&unit) else {
            return Ok(None);
        };
        let response = match request {
            Request::ReadCoils(a, n) => Response::ReadCoils(range(&t.coils, a, n)?),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(range(&t.discrete, a, n)?)
            }
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(range(&t.holding, a, n)?)
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(range(&t.input, a, n)?)
            }
            Request::WriteSingleCoil(a, v) => {
                write(&mut t.coils, a, &[v])?;
                Response::WriteSingleCoil(a, v)
            }
            Request::WriteSingleRegister(a, v) => {
                write(&mut t.holding, a, &[v])?;
                Response::WriteSingleRegister(a, v)
            }
            Request::WriteMultipleRegisters(a, v) => {
                write(&mut t.holding, a, &v)?;
                Response::WriteMultipleRegisters(a, v.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        Ok(Some(response))
    }
}

#[derive(Clone)]
struct Answer(Arc<Mutex<State>>);

impl Service for Answer {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        let is_write = matches!(
            req.request,
            Request::WriteSingleCoil(..)
                | Request::WriteSingleRegister(..)
                | Request::WriteMultipleCoils(..)
                | Request::WriteMultipleRegisters(..)
        );
        let mut state = lock(&self.0);
        let delay = state.write_delay.filter(|_| is_write);
        let result = state.answer(req.slave, req.request);
        drop(state);
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            result
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Modbus slave on its own runtime: TCP on 127.0.0.1, or RTU on a pty
/// whose other end is reachable through a symlink.
pub struct Slave {
    state: Arc<Mutex<State>>,
    rt: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
    /// RTU: the pty end the gateway does not use, kept open.
    pty: Option<tokio_serial::SerialStream>,
}

impl Slave {
    pub fn new(units: impl IntoIterator<Item = (u8, Tables)>) -> Slave {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = State {
            units: units.into_iter().collect(),
            ..State::default()
        };
        Slave {
            state: Arc::new(Mutex::new(state)),
            rt,
            server: None,
            pty: None,
        }
    }

    /// Serves Modbus TCP on `port` (0: a free one); returns the port.
    pub fn serve_tcp(&mut self, port: u16) -> u16 {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = Answer(self.state.clone());
        self.server = Some(self.rt.spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, addr| {
                let service = service.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, |_| {
                        Ok(Some(service.clone()))
                    })
                }
            };
            let _ = server
                .serve(&on_connected, |e| eprintln!("slave: {e}"))
                .await;
        }));
        port
    }

    /// Serves Modbus RTU on a new pty pair; `link` then points at the end
    /// the gateway opens.
    pub fn serve_rtu(&mut self, link: &Path) {
        let _guard = self.rt.enter();
        let (a, b) = tokio_serial::SerialStream::pair().unwrap();
        use tokio_serial::SerialPort;
        let (server_end, gateway_end) = if a.name().is_some() { (b, a) } else { (a, b) };
        let path = gateway_end.name().expect("the pty's path");
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&path, link).unwrap();
        self.pty = Some(gateway_end);
        let service = Answer(self.state.clone());
        self.server = Some(self.rt.spawn(async move {
            let server = tokio_modbus::server::rtu::Server::new(server_end);
            let _ = server.serve_forever(service).await;
        }));
    }

    /// Serves Modbus RTU frames over TCP, as a serial-to-Ethernet converter
    /// in raw mode does: each connection is bridged to an RTU slave on a
    /// pty. Returns the port.
    pub fn serve_rtu_over_tcp(&mut self) -> u16 {
        let _guard = self.rt.enter();
        let (a, b) = tokio_serial::SerialStream::pair().unwrap();
        use tokio_serial::SerialPort;
        let (server_end, mut line_end) = if a.name().is_some() { (b, a) } else { (a, b) };
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = Answer(self.state.clone());
        let rtu = self.rt.spawn(async move {
            let server = tokio_modbus::server::rtu::Server::new(server_end);
            let _ = server.serve_forever(service).await;
        });
        self.server = Some(self.rt.spawn(async move {
            // One connection at a time, like most converters.
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut line_end).await;
            }
            rtu.abort();
        }));
        port
    }

    /// Stops serving and closes the connections (or the pty).
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.rt.block_on(server);
        }
        self.pty = None;
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }
}
