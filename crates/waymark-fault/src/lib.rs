//! Fault injection for Waymark's tests, in one place: `WAYMARK_FAULT=<point>` makes
//! the program misbehave at a named point, so a test can show what a crash, a pause or
//! a lost connection there leaves behind.
//!
//! Only a build with the `enabled` feature reads the variable: the tests turn it on
//! (as a dev-dependency feature, which Cargo applies to the binaries the tests run),
//! and a release build, `cargo install` or the flake's package leaves it off, so every
//! point is then inert and compiled away.

/// Whether the fault at `point` is asked for: the caller misbehaves there as it says.
#[inline]
pub fn at(point: &str) -> bool {
    #[cfg(feature = "enabled")]
    {
        std::env::var("WAYMARK_FAULT").is_ok_and(|f| f == point)
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = point;
        false
    }
}

/// A crash point: `WAYMARK_FAULT=<point>` aborts the process here, as a crash or a
/// power cut would (no destructor runs); `WAYMARK_FAULT=slow-<point>` pauses here for
/// 300 ms, to widen a race window.
#[inline]
pub fn crash_at(point: &str) {
    #[cfg(feature = "enabled")]
    match std::env::var("WAYMARK_FAULT") {
        Ok(f) if f == point => std::process::abort(),
        Ok(f) if f.strip_prefix("slow-") == Some(point) => {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        _ => {}
    }
    #[cfg(not(feature = "enabled"))]
    let _ = point;
}
