//! Kernel timestamps (CLOCK_MONOTONIC, from `bpf_ktime_get_ns`) to wall-clock Unix time.
//!
//! The offset between the two clocks is sampled at start and re-sampled periodically (NTP
//! slews the realtime clock); each sample brackets the realtime read between two monotonic
//! reads so the error is bounded by the time of one read.

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime - monotonic, in ns.
    offset_ns: i128,
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

pub fn monotonic_now_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC) as u64
}

impl Clock {
    pub fn sample() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..3 {
            let a = now(libc::CLOCK_MONOTONIC);
            let r = now(libc::CLOCK_REALTIME);
            let b = now(libc::CLOCK_MONOTONIC);
            let width = b - a;
            let offset = r - (a + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self {
            offset_ns: best.map(|(_, o)| o).unwrap_or(0),
        }
    }

    #[cfg(test)]
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_unix_ns(&self, monotonic_ns: u64) -> u64 {
        (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_about_now() {
        let c = Clock::sample();
        let unix = c.to_unix_ns(monotonic_now_ns()) as i128;
        let real = now(libc::CLOCK_REALTIME);
        assert!((unix - real).abs() < 5_000_000, "off by {} ns", unix - real);
    }
}
