//! Reading the built-in persona files (`coordinator/personas/*.toml`) into the mirror
//! generator's [`PersonaProfile`]s, for the examples that train or probe the mirror model.
//! Only the slug, the software names and the weekly usage are read; the coordinator's own
//! loader stays the authority on the full format.

use std::path::{Path, PathBuf};

use persona_models::mirror_data::{HourlySeries, PersonaProfile};
use serde::Deserialize;

#[derive(Deserialize)]
struct Series {
    p50: Vec<Vec<f64>>,
    p95: Vec<Vec<f64>>,
}

#[derive(Deserialize)]
struct Usage {
    cpu_cores: Series,
    memory_gib: Series,
    disk_mbps: Series,
    network_mbps: Series,
}

#[derive(Deserialize)]
struct Pkg {
    name: String,
}

#[derive(Deserialize)]
struct Software {
    deb: Vec<Pkg>,
    pip: Vec<Pkg>,
    npm: Vec<Pkg>,
    containers: Vec<Pkg>,
}

#[derive(Deserialize)]
struct PersonaFile {
    slug: String,
    software: Software,
    usage: Usage,
}

fn series(s: Series) -> HourlySeries {
    HourlySeries {
        p50: s.p50,
        p95: s.p95,
    }
}

/// The directory of the built-in persona files in this source tree.
pub fn default_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../coordinator/personas"
    ))
}

/// Every `*.toml` in `dir`, sorted by file name (the model's output order).
pub fn load(dir: &Path) -> Result<Vec<PersonaProfile>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let p: PersonaFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let sw = &p.software;
        let software = sw
            .deb
            .iter()
            .chain(&sw.pip)
            .chain(&sw.npm)
            .chain(&sw.containers)
            .map(|p| p.name.clone())
            .collect();
        out.push(PersonaProfile {
            slug: p.slug,
            cpu_cores: series(p.usage.cpu_cores),
            memory_gib: series(p.usage.memory_gib),
            disk_mbps: series(p.usage.disk_mbps),
            network_mbps: series(p.usage.network_mbps),
            software,
        });
    }
    Ok(out)
}
