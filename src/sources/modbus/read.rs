//! Reading blocks of registers, and finding the points in a block that a
//! device refuses to read (reserved registers in the middle of a map answer
//! exception 2), so that the rest of the block is read around them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_modbus::{ExceptionCode, Request, Response};

use super::link::{Failure, ModbusLink};
use super::plan::{Block, Learned};
use super::publish::PointResult;
use super::value::{Layout, Raw, RegisterKind};
use crate::health::DeviceHealth;

/// `holding 100-109`: a block, in the words of the configuration.
pub fn describe(block: &Block) -> String {
    let last = u32::from(block.start) + u32::from(block.count).max(1) - 1;
    format!("reading {} {}-{last}", block.register.as_str(), block.start)
}

/// A read's answer.
pub enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Answer {
    pub fn at(&self, offset: usize) -> Raw<'_> {
        match self {
            Answer::Words(w) => Raw::Words(w.get(offset..).unwrap_or_default()),
            Answer::Bits(b) => Raw::Bits(b.get(offset..).unwrap_or_default()),
        }
    }
}

/// One block, tried up to `attempts` times (an exception is final).
pub async fn read(
    link: &mut ModbusLink,
    unit: u8,
    wait: Duration,
    block: &Block,
    attempts: u64,
) -> Result<Answer, Failure> {
    let (start, count) = (block.start, block.count);
    let mut last = Failure::Timeout(wait);
    for _ in 0..attempts.max(1) {
        let request = match block.register {
            RegisterKind::Coil => Request::ReadCoils(start, count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(start, count),
            RegisterKind::Input => Request::ReadInputRegisters(start, count),
            RegisterKind::Holding => Request::ReadHoldingRegisters(start, count),
        };
        let failure = match link.call(unit, request, wait).await {
            Ok(response) => match checked(response, count) {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            },
            Err(failure) => failure,
        };
        if matches!(failure, Failure::Exception(_)) {
            return Err(failure);
        }
        last = failure;
    }
    Err(last)
}

/// The answer's items, if there are as many as requested.
fn checked(response: Response, count: u16) -> Result<Answer, Failure> {
    let count = usize::from(count);
    let short = |got: usize, what: &str| {
        Failure::Mismatch(format!("{got} {what} for a request of {count}"))
    };
    match response {
        Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits) => {
            // Bits come in whole bytes: the padding is dropped.
            if bits.len() < count {
                return Err(short(bits.len(), "bits"));
            }
            bits.truncate(count);
            Ok(Answer::Bits(bits))
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            if words.len() != count {
                return Err(short(words.len(), "registers"));
            }
            Ok(Answer::Words(words))
        }
        other => Err(Failure::Mismatch(format!("{other:?}"))),
    }
}

/// Whether the device refuses the addresses themselves (illegal data
/// address or value): the same read will always fail, a smaller one may not.
pub fn is_map_refusal(failure: &Failure) -> bool {
    matches!(
        failure,
        Failure::Exception(ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue)
    )
}

/// What one device's poll reads with.
pub struct Reader<'a> {
    pub link: &'a mut ModbusLink,
    pub unit: u8,
    pub wait: Duration,
    pub attempts: u64,
    pub layouts: &'a [Layout],
    pub health: &'a DeviceHealth,
}

impl Reader<'_> {
    /// Decodes the points of `block` from its answer into `outcomes`.
    pub fn fill(&self, block: &Block, answer: &Answer, outcomes: &mut [Option<PointResult>]) {
        for &i in &block.points {
            let offset = block.offset_of(&self.layouts[i]);
            let decoded = self.layouts[i].decode(answer.at(offset));
            if decoded.is_err() {
                self.health.bad_input.fetch_add(1, Relaxed);
            }
            outcomes[i] = Some(decoded);
        }
    }

    /// Reads a block that the device refused by halves, down to single
    /// points: fills in what reads, and records in `learned` the points
    /// that refuse (holes) and where two halves read alone but not
    /// together (barriers). Returns whether the whole block read; fails
    /// when the device stops answering meanwhile.
    pub fn probe<'s>(
        &'s mut self,
        block: Block,
        outcomes: &'s mut [Option<PointResult>],
        learned: &'s mut Learned,
    ) -> Pin<Box<dyn Future<Output = Result<bool, Failure>> + Send + 's>>
    where
        Self: Send,
    {
        Box::pin(async move {
            let failure = match read(self.link, self.unit, self.wait, &block, self.attempts).await {
                Ok(answer) => {
                    self.fill(&block, &answer, outcomes);
                    return Ok(true);
                }
                Err(failure) if is_map_refusal(&failure) => failure,
                Err(failure) => return Err(failure),
            };
            if let [i] = block.points[..] {
                let reason = format!("{}: {failure}", describe(&block));
                outcomes[i] = Some(Err(reason.clone()));
                learned.holes.insert(i, reason);
                learned.barriers.insert((block.register, block.start));
                return Ok(false);
            }
            let (left, right) = halves(&block, self.layouts);
            let middle = right.start;
            let left_whole = self.probe(left, outcomes, learned).await?;
            let right_whole = self.probe(right, outcomes, learned).await?;
            if left_whole && right_whole {
                // Each half reads, the two together do not: what lies
                // between them is refused.
                learned.barriers.insert((block.register, middle));
            }
            Ok(false)
        })
    }
}

/// A block's points in two halves, each with the span it needs.
fn halves(block: &Block, layouts: &[Layout]) -> (Block, Block) {
    let middle = block.points.len() / 2;
    let part = |points: &[usize]| {
        let start = points
            .iter()
            .map(|&i| layouts[i].address)
            .min()
            .unwrap_or(block.start);
        let end = points
            .iter()
            .map(|&i| u32::from(layouts[i].address) + u32::from(layouts[i].width()))
            .max()
            .unwrap_or(u32::from(start));
        Block {
            register: block.register,
            start,
            count: u16::try_from(end - u32::from(start)).unwrap_or(u16::MAX),
            points: points.to_vec(),
        }
    };
    (part(&block.points[..middle]), part(&block.points[middle..]))
}
