//! Network addresses as an operator writes them in a flag or a config file. What this is
//! not: resolution, which happens at connect time (the address behind a name may change
//! while a daemon runs).

/// A cheap syntactic check of HOST:PORT: a non-empty host and a port in 1..=65535.
pub fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert!(looks_like_host_port("localhost:7443"));
        assert!(looks_like_host_port("[::1]:7443"));
        assert!(!looks_like_host_port("localhost"));
        assert!(!looks_like_host_port(":7443"));
        assert!(!looks_like_host_port("h:0"));
    }
}
