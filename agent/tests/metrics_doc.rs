//! docs/metrics.md must list every metric of the registry with its id, unit and
//! precision, and nothing else: the page is what operators and the coordinator's
//! users read, the registry is what goes on the wire.
#![allow(clippy::unwrap_used)]

use persona_shared::metrics;

#[test]
fn metrics_doc_matches_the_registry() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let rows: Vec<Vec<&str>> = doc
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("| `"))
        .map(|l| l.split('|').map(str::trim).collect())
        .filter(|c: &Vec<&str>| c.get(1).is_some_and(|id| id.parse::<u16>().is_ok()))
        .collect();
    assert_eq!(rows.len(), metrics::all().count());
    for d in metrics::all() {
        let row = rows
            .iter()
            .find(|r| r[1] == d.id.to_string())
            .unwrap_or_else(|| panic!("id {} missing", d.id));
        assert_eq!(row[2], format!("`{}`", d.name));
        assert_eq!(row[3], d.unit, "{}", d.name);
        assert_eq!(row[4], format!("10^{}", d.scale), "{}", d.name);
    }
}
