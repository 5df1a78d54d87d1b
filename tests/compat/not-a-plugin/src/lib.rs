//! Exports an ordinary C function and nothing stagecraft knows.

/// The answer.
#[unsafe(no_mangle)]
pub extern "C" fn answer() -> i32 {
    42
}
