//! COM1: the guest kernel's console. Output goes to a log file and through
//! a scanner that remembers the last lines and any kernel panic message,
//! so a guest fault can be reported with the guest's own words.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::persist::Persist;

/// How many console lines are kept for error reports.
const TAIL_LINES: usize = 40;
/// Longest console line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 512;

/// What the console has shown so far that matters for diagnosis.
#[derive(Debug, Default)]
pub(crate) struct ConsoleTranscript {
    tail: VecDeque<String>,
    current: Vec<u8>,
    panic_line: Option<String>,
}

impl ConsoleTranscript {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.current)
                    .trim_end_matches('\r')
                    .to_string();
                self.current.clear();
                if self.panic_line.is_none() && line.contains("Kernel panic - not syncing") {
                    self.panic_line = Some(line.clone());
                }
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(line);
            } else if self.current.len() < MAX_LINE {
                self.current.push(b);
            }
        }
    }

    /// The first kernel panic line seen, if any.
    pub(crate) fn panic_line(&self) -> Option<&str> {
        self.panic_line.as_deref()
    }

    /// The last lines of console output.
    #[cfg(test)]
    pub(crate) fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// The serial's output: the log (if any) plus the transcript.
struct ConsoleSink {
    log: Option<Box<dyn Write + Send>>,
    transcript: Arc<Mutex<ConsoleTranscript>>,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut t) = self.transcript.lock() {
            t.push(buf);
        }
        if let Some(log) = self.log.as_mut() {
            // A full disk must not stop the guest: console output is best effort.
            if log.write_all(buf).is_err() {
                self.log = None;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(log) = self.log.as_mut() {
            let _ = log.flush();
        }
        Ok(())
    }
}

/// Raises the serial IRQ through an irqfd.
struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The 8250 UART on COM1.
pub(crate) struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, ConsoleSink>,
}

/// What a UART is built around, at cold boot and at restore.
pub(crate) struct SerialArgs {
    /// Raises the serial IRQ.
    pub irq: EventFd,
    /// The console log, if the runner asked for one.
    pub log: Option<Box<dyn Write + Send>>,
    /// What the runner's error reports quote.
    pub transcript: Arc<Mutex<ConsoleTranscript>>,
}

impl SerialArgs {
    fn into_parts(self) -> (IrqTrigger, ConsoleSink) {
        let SerialArgs {
            irq,
            log,
            transcript,
        } = self;
        (IrqTrigger(irq), ConsoleSink { log, transcript })
    }
}

impl SerialConsole {
    /// A UART in power-on state.
    pub(crate) fn new(args: SerialArgs) -> Self {
        let (irq, sink) = args.into_parts();
        SerialConsole {
            uart: Serial::new(irq, sink),
        }
    }

    /// Port read at `offset` from COM1's base.
    pub(crate) fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Port write at `offset` from COM1's base.
    pub(crate) fn write(&mut self, offset: u8, value: u8) {
        // The only failure is the IRQ eventfd write, which cannot fail for a
        // valid eventfd short of counter overflow; losing one interrupt of
        // console output is harmless.
        let _ = self.uart.write(offset, value);
    }
}

impl Persist for SerialConsole {
    type State = SerialConsoleState;
    type RestoreArgs<'a> = SerialArgs;
    type Error = SerialRestoreError;

    /// The UART's registers; never fails.
    fn save(&self) -> Result<SerialConsoleState, SerialRestoreError> {
        let st = self.uart.state();
        Ok(SerialConsoleState {
            registers: [
                st.baud_divisor_low,
                st.baud_divisor_high,
                st.interrupt_enable,
                st.interrupt_identification,
                st.line_control,
                st.line_status,
                st.modem_control,
                st.modem_status,
                st.scratch,
            ],
            in_buffer: st.in_buffer,
        })
    }

    /// Rebuilds the UART. Forgetting this state (e.g. the interrupt enable
    /// register) silently stalls the guest's console.
    fn restore(args: SerialArgs, snap: &SerialConsoleState) -> Result<Self, SerialRestoreError> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            snap.registers;
        let state = SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: snap.in_buffer.clone(),
        };
        let (irq, sink) = args.into_parts();
        let uart = Serial::from_state(&state, irq, NoEvents, sink)
            .map_err(|e| SerialRestoreError(format!("{e:?}")))?;
        Ok(SerialConsole { uart })
    }
}

/// The UART state that does not survive a snapshot on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SerialConsoleState {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Input bytes not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// A snapshot's serial state was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid serial state in snapshot: {0}")]
pub(crate) struct SerialRestoreError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_keeps_the_panic_line_and_a_bounded_tail() {
        let mut t = ConsoleTranscript::default();
        for i in 0..100 {
            t.push(format!("line {i}\r\n").as_bytes());
        }
        t.push(b"[    1.0] Kernel panic - not syncing: sysrq triggered crash\n");
        t.push(b"later\n");
        assert_eq!(
            t.panic_line(),
            Some("[    1.0] Kernel panic - not syncing: sysrq triggered crash")
        );
        assert_eq!(t.tail().len(), TAIL_LINES);
        assert_eq!(t.tail().last().map(String::as_str), Some("later"));
    }

    #[test]
    fn transcript_truncates_overlong_lines() {
        let mut t = ConsoleTranscript::default();
        t.push(&vec![b'x'; 10_000]);
        t.push(b"\n");
        assert_eq!(t.tail()[0].len(), MAX_LINE);
    }
}
