//! Load collector: the 1, 5 and 15-minute load averages from `/proc/loadavg`. They are
//! gauges computed by the kernel, so there is no state between ticks. The runnable and
//! blocked task counts come from /proc/stat (see [`super::cpu`]), not from here.

use std::path::{Path, PathBuf};

use persona_shared::metrics::host;
use persona_shared::sample::Sample;

use super::parse::{fields, parse_f64, read_into};
use super::{CollectError, Source};

const FILE: &str = "loadavg";

/// Parses the three averages from /proc/loadavg.
pub(crate) fn parse_loadavg(buf: &[u8]) -> Result<[f64; 3], CollectError> {
    let mut f = fields(buf);
    let mut out = [0.0; 3];
    for v in &mut out {
        *v = f.next().and_then(parse_f64).ok_or(CollectError::Parse {
            file: FILE,
            what: "a load average is not a number",
        })?;
    }
    Ok(out)
}

pub(crate) struct Load {
    path: PathBuf,
}

impl Load {
    pub(crate) fn new(proc_root: &Path) -> Self {
        Self {
            path: proc_root.join(FILE),
        }
    }
}

impl Source for Load {
    fn name(&self) -> &'static str {
        "load"
    }

    fn collect(
        &mut self,
        _now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        read_into(&self.path, buf).map_err(|source| CollectError::Io { file: FILE, source })?;
        let l = parse_loadavg(buf)?;
        out.host[host::LOAD_1M] = l[0];
        out.host[host::LOAD_5M] = l[1];
        out.host[host::LOAD_15M] = l[2];
        Ok(())
    }
}
