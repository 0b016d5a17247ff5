//! Legacy PC devices: the 8250 UART and the i8042 keyboard controller.

pub mod console;
pub mod i8042;
pub mod persist;
pub mod serial;

pub use console::Console;
pub use i8042::I8042Device;
pub use serial::{RateLimited, SerialDevice};

/// Port base and length of COM1.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;
/// The i8042 answers at 0x60 (data) and 0x64 (status/command).
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
pub const I8042_IRQ: u32 = 1;
