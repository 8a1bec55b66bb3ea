//! Strips terminal escapes and control characters from everything an agent says that an operator will read
//! (facts, the declared purpose, event summaries and names, process names) before it is
//! stored, so no terminal escape ever reaches the database. `personactl` strips again
//! when printing, for rows stored before this existed.

use persona_shared::events::{AgentEvent, EventKind};
use persona_shared::facts::HostFacts;
use persona_shared::protocol::{Purpose, WireProc};
use persona_shared::text::clean_in_place as clean;

fn clean_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        clean(s);
    }
}

pub fn facts(f: &mut HostFacts) {
    clean(&mut f.hostname);
    clean_opt(&mut f.os_release);
    clean_opt(&mut f.kernel);
    clean_opt(&mut f.virtualization);
    clean_opt(&mut f.instance_id);
    for d in &mut f.disks {
        clean(&mut d.name);
        clean_opt(&mut d.model);
    }
    for n in &mut f.nics {
        clean(&mut n.name);
    }
}

pub fn purpose(p: &mut Purpose) {
    clean(&mut p.description);
    for s in &mut p.software {
        clean(s);
    }
}

pub fn event(e: &mut AgentEvent) {
    clean(&mut e.summary);
    for ev in &mut e.evidence {
        clean(&mut ev.name);
    }
    if let EventKind::RunawayProcess { comm } = &mut e.kind {
        clean(comm);
    }
}

pub fn procs(p: &mut [WireProc]) {
    for p in p {
        clean(&mut p.comm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_lose_their_escapes() {
        let mut f = HostFacts {
            hostname: "vm\x1b]0;x\x07".into(),
            os_release: Some("Debian\x1b[2J".into()),
            ..HostFacts::default()
        };
        facts(&mut f);
        assert_eq!(f.hostname, "vm");
        assert_eq!(f.os_release.as_deref(), Some("Debian"));
        let mut p = Purpose {
            description: "db\x1b[8m hidden".into(),
            software: vec!["pg\u{9b}1m".into()],
            data_gb: None,
        };
        purpose(&mut p);
        assert_eq!(p.description, "db hidden");
        assert_eq!(p.software, vec!["pg".to_owned()]);
    }
}
