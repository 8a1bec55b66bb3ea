//! Network collector: per-interface byte, packet, error and drop rates from
//! `/proc/net/dev` (that is, of the agent's network namespace: the agent must run in the
//! VM's root namespace to see its NICs). Every interface is listed, loopback included;
//! the total leaves out loopback (`lo`), whose traffic never leaves the machine. Link
//! speed and MTU are host facts, read in [`super::facts`].

use std::path::{Path, PathBuf};

use persona_shared::metrics::nic;
use persona_shared::sample::Sample;

use super::devices::{Registry, copy_out, finite_sum};
use super::parse::{elapsed_secs, fields, lines, parse_u64, rate, read_into};
use super::{CollectError, Source};

const FILE: &str = "net/dev";
/// Column (after the interface name) of each counter, in the order of the `net.*`
/// metrics: rx bytes, tx bytes, rx packets, tx packets, rx errs, tx errs, rx drop, tx drop.
const COLUMNS: [usize; nic::COUNT] = [0, 8, 1, 9, 2, 10, 3, 11];

/// Parses one interface line of /proc/net/dev into its name and counters (metric
/// order). Header lines and malformed lines give None.
pub(crate) fn parse_line(line: &[u8]) -> Option<(&str, [u64; nic::COUNT])> {
    // Old kernels print `eth0:123` with no space once the counter is wide, so split on
    // the colon rather than on whitespace.
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, rest) = line.split_at(colon);
    let name = std::str::from_utf8(name.trim_ascii()).ok()?;
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let mut cols = [0u64; 12];
    let mut f = fields(rest.get(1..)?);
    for c in &mut cols {
        *c = parse_u64(f.next()?)?;
    }
    Some((name, COLUMNS.map(|c| cols[c])))
}

pub(crate) struct NicState {
    prev: Option<(u64, [u64; nic::COUNT])>,
    values: [f64; nic::COUNT],
}

pub(crate) struct Nics {
    path: PathBuf,
    pub(crate) devices: Registry<NicState>,
}

impl Nics {
    pub(crate) fn new(proc_root: &Path) -> Self {
        Self {
            path: proc_root.join(FILE),
            devices: Registry::new(),
        }
    }
}

impl Source for Nics {
    fn name(&self) -> &'static str {
        "net"
    }

    fn collect(
        &mut self,
        now_ns: u64,
        buf: &mut Vec<u8>,
        out: &mut Sample,
    ) -> Result<(), CollectError> {
        read_into(&self.path, buf).map_err(|source| CollectError::Io { file: FILE, source })?;
        self.devices.begin();
        let mut parsed_any = false;
        // The first two lines are column headers.
        for line in lines(buf).skip(2) {
            let Some((name, cur)) = parse_line(line) else {
                continue;
            };
            parsed_any = true;
            let st = &mut self
                .devices
                .entry(name, |_| NicState {
                    prev: None,
                    values: [f64::NAN; nic::COUNT],
                })
                .state;
            let (secs, prev) = match &st.prev {
                Some((t, p)) => (elapsed_secs(Some(*t), now_ns), *p),
                None => (f64::NAN, [u64::MAX; nic::COUNT]),
            };
            for i in 0..nic::COUNT {
                st.values[i] = rate(prev[i], cur[i], secs);
            }
            st.prev = Some((now_ns, cur));
        }
        if !parsed_any {
            // Even a machine with no network has `lo`: an empty list means garbage, not
            // "every NIC gone", so the known NICs are kept (no facts change).
            return Err(CollectError::Parse {
                file: FILE,
                what: "no interface line",
            });
        }
        self.devices.end();
        copy_out(
            self.devices
                .iter()
                .map(|d| (d.name.as_str(), &d.state.values)),
            &mut out.nics,
        );
        for i in 0..nic::COUNT {
            out.nic_total[i] = finite_sum(
                self.devices
                    .iter()
                    .filter(|d| d.name != "lo")
                    .map(|d| d.state.values[i]),
            );
        }
        Ok(())
    }
}
