//! PID 1.
pub fn run() -> ! {
    std::process::exit(1)
}
