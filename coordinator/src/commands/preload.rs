//! The coordinator's half of the pre-load orchestrator: it turns what a VM is expected
//! to need into a signed `Preload` command.
//!
//! Where the needs come from, in order: an explicit `--persona SLUG` (that persona's
//! manifest); otherwise the combined persona distribution the coordinator believes for the
//! VM (`belief`: the profiler's prior on the declared purpose and the observed behaviour),
//! whose likely personas' manifests are merged with the declared software; otherwise, for
//! an agent with no belief yet, the profiler run on the purpose it declared in Hello.
//! Operator-given files (URL, SHA-256, size, destination) are added as file steps.
//!
//! Manifest kinds map to steps: `deb` → apt, `rpm` → dnf, `pip` → pip, `container` →
//! image pull (`version` is the tag). Package versions are kept: a persona's "550" is a
//! release series, which the agent resolves to the newest available exact version in
//! it (`nvidia-driver=550.54.14-1`, checked with apt-cache) before apt-get runs; pip
//! steps keep the series (`==2.5.*`). `npm` (the plan protocol has no npm step: an agent
//! that does not know a step kind refuses the whole signed plan, so one is not added
//! without a protocol version), `dataset` (no URL or checksum in a manifest) and declared
//! software of no known ecosystem are listed as skipped with the reason.
//!
//! What the VM already has is skipped by the agent when it runs the plan (each step
//! checks presence first and reports "skipped (present)"), rather than here from an
//! inventory: host facts would have to carry every installed package and image, which
//! is large and stale by the time the plan runs, while the agent's check is exact at
//! execution time and makes a resent plan idempotent. What it is not: execution
//! (`persona_agent::preload`) or delivery (`commands`).

use persona_shared::command::{Action, CommandState, PackageManager, PreloadPlan, PreloadStep};
use persona_shared::preload::StepResult;
use persona_shared::preload::validate;
use serde::{Deserialize, Serialize};

use crate::profile::sizing::PlanItem;
use crate::profile::{ProfileRequest, ProfilingService};
use crate::store::Store;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error("no agent {0}")]
    UnknownAgent(String),
    #[error("no persona {0}")]
    UnknownPersona(String),
    #[error("command {id} cannot be retried: {reason}")]
    NotRetriable { id: String, reason: String },
    #[error(
        "agent {0} declared no purpose, so there is no persona to plan from: pass --persona SLUG"
    )]
    NoPurpose(String),
    #[error("the persona database is not available on this coordinator")]
    NoProfiler,
    #[error("file {index}: {reason}")]
    BadFile { index: usize, reason: String },
    #[error("nothing to do: {0}")]
    Empty(String),
    #[error("{0}")]
    Profile(String),
    #[error("{0}")]
    Command(#[from] crate::commands::CommandError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// A file the operator adds to the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub url: String,
    pub sha256: String,
    pub size: u64,
    pub dest: String,
}

/// The body of `POST /v1/preload`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadRequest {
    pub agent: String,
    #[serde(default)]
    pub persona: Option<String>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Re-send only the steps of this finished pre-load command that failed or never
    /// ran (its per-step results say which); `persona` and `files` must then be absent.
    #[serde(default)]
    pub retry: Option<String>,
}

fn default_ttl() -> u64 {
    6 * 3600
}

/// A manifest item that did not become a step, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

/// The plan and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct PlanDoc {
    pub agent: String,
    /// `persona` (explicit), `combined` (the coordinator's belief about the VM: prior and
    /// observed behaviour) or `profiler` (the declared purpose, when no belief exists yet).
    pub source: String,
    /// The persona(s) the items came from.
    pub personas: Vec<String>,
    pub plan: PreloadPlan,
    pub steps: Vec<String>,
    pub skipped: Vec<Skipped>,
    pub dry_run: bool,
    /// The command id, when sent.
    pub command: Option<String>,
}

/// Turns manifest items into steps; returns the steps and what was skipped.
pub fn steps_from_items(items: &[PlanItem]) -> (Vec<PreloadStep>, Vec<Skipped>) {
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for it in items {
        let skip = |reason: String| Skipped {
            kind: it.kind.clone(),
            name: it.name.clone(),
            reason,
        };
        let step = match it.kind.as_str() {
            "deb" | "rpm" => {
                let (manager, name_ok) = if it.kind == "deb" {
                    (PackageManager::Apt, validate::apt_package(&it.name))
                } else {
                    (PackageManager::Dnf, validate::rpm_package(&it.name))
                };
                name_ok
                    .and_then(|()| match &it.version {
                        Some(v) => validate::package_version(v).map(|()| Some(v.clone())),
                        None => Ok(None),
                    })
                    .map(|version| PreloadStep::Package {
                        manager,
                        name: it.name.clone(),
                        version,
                    })
            }
            "pip" => validate::python_name(&it.name)
                .and_then(|()| match &it.version {
                    Some(v) => validate::python_version(v).map(|()| Some(v.clone())),
                    None => Ok(None),
                })
                .map(|version| PreloadStep::Pip {
                    name: it.name.clone(),
                    version,
                }),
            "container" => {
                let reference = match &it.version {
                    Some(t) => format!("{}:{t}", it.name),
                    None => it.name.clone(),
                };
                validate::image_reference(&reference).map(|_| PreloadStep::Image { reference })
            }
            "npm" => {
                skipped.push(skip(
                    "npm: the plan protocol has no npm step yet (an agent refuses a whole signed plan with a step kind it does not know); install it from the VM's own tooling".into(),
                ));
                continue;
            }
            "dataset" => {
                skipped.push(skip(
                    "a manifest data set has no URL or checksum: add it with --file URL,SHA256,SIZE,DEST"
                        .into(),
                ));
                continue;
            }
            other => {
                skipped.push(skip(format!(
                    "{other}: no known package ecosystem for this name"
                )));
                continue;
            }
        };
        match step {
            Ok(s) => steps.push(s),
            Err(e) => skipped.push(skip(e.to_string())),
        }
    }
    (steps, skipped)
}

/// Checks an operator's file and turns it into a step.
pub fn file_step(index: usize, f: &FileSpec) -> Result<PreloadStep, PreloadError> {
    let bad = |reason: String| PreloadError::BadFile { index, reason };
    validate::url(&f.url).map_err(|e| bad(e.to_string()))?;
    validate::sha256_hex(&f.sha256).map_err(|e| bad(e.to_string()))?;
    let p = std::path::Path::new(&f.dest);
    if !p.is_absolute() || p.components().any(|c| c.as_os_str() == "..") || p.file_name().is_none()
    {
        return Err(bad(format!(
            "destination {:?} must be an absolute file path without ..",
            f.dest
        )));
    }
    Ok(PreloadStep::File {
        url: f.url.clone(),
        sha256: f.sha256.to_ascii_lowercase(),
        size: f.size,
        dest: f.dest.clone(),
    })
}

/// The plan that retries what a finished pre-load command left undone: its steps whose
/// result line (`step N failed|not-run: ...`, written by the agent) asks for a retry.
fn retry_plan(store: &Store, req: &PreloadRequest, id: &str) -> Result<PlanDoc, PreloadError> {
    let refuse = |reason: &str| PreloadError::NotRetriable {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    if req.persona.is_some() || !req.files.is_empty() {
        return Err(refuse("a retry takes no --persona or --file"));
    }
    let cmd = store
        .get_command(id)?
        .ok_or_else(|| refuse("no such command"))?;
    if cmd.agent != req.agent {
        return Err(refuse("it belongs to another agent"));
    }
    let Ok(Action::Preload(old)) = serde_json::from_value::<Action>(cmd.action.clone()) else {
        return Err(refuse("it is not a pre-load"));
    };
    let state = CommandState::parse(&cmd.state);
    if !state.is_some_and(CommandState::is_final) {
        return Err(refuse("it has not finished"));
    }
    let results = StepResult::parse_all(cmd.message.as_deref().unwrap_or(""));
    if results.is_empty() {
        return Err(refuse("it reported no per-step results"));
    }
    let steps: Vec<PreloadStep> = old
        .steps
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            results
                .iter()
                .find(|r| r.index == *i)
                .is_none_or(|r| r.status.needs_retry())
        })
        .map(|(_, s)| s.clone())
        .collect();
    if steps.is_empty() {
        return Err(PreloadError::Empty(format!(
            "every step of {id} succeeded; nothing to retry"
        )));
    }
    let plan = PreloadPlan {
        persona: old.persona.clone(),
        steps,
    };
    Ok(PlanDoc {
        agent: req.agent.clone(),
        source: format!("retry of {id}"),
        personas: old.persona.into_iter().collect(),
        steps: plan.steps.iter().map(PreloadStep::describe).collect(),
        plan,
        skipped: Vec::new(),
        dry_run: req.dry_run,
        command: None,
    })
}

/// The personas plan items came from, sorted, without "declared".
fn sources(items: &[PlanItem]) -> Vec<String> {
    let mut from: Vec<String> = items
        .iter()
        .flat_map(|i| i.from.iter().cloned())
        .filter(|s| s != "declared")
        .collect();
    from.sort();
    from.dedup();
    from
}

/// Makes the plan for a request (blocking: reads the store and may run the profiler).
pub fn plan(
    store: &Store,
    profiling: Option<&ProfilingService>,
    req: &PreloadRequest,
) -> Result<PlanDoc, PreloadError> {
    let info = store
        .get_agent(&req.agent)?
        .ok_or_else(|| PreloadError::UnknownAgent(req.agent.clone()))?;
    if let Some(id) = &req.retry {
        return retry_plan(store, req, id);
    }
    let svc = profiling.ok_or(PreloadError::NoProfiler)?;
    let (source, personas, items) = match &req.persona {
        Some(slug) => {
            let p = svc
                .db
                .get(slug)
                .map_err(|e| PreloadError::Profile(e.to_string()))?
                .ok_or_else(|| PreloadError::UnknownPersona(slug.clone()))?
                .persona;
            let items: Vec<PlanItem> = p
                .preload
                .iter()
                .map(|i| PlanItem {
                    kind: i.kind.clone(),
                    name: i.name.clone(),
                    version: i.version.clone(),
                    weight: 1.0,
                    from: vec![p.slug.clone()],
                })
                .collect();
            ("persona", vec![p.slug.clone()], items)
        }
        None => {
            let purpose = info
                .purpose
                .as_ref()
                .and_then(|v| {
                    serde_json::from_value::<persona_shared::protocol::Purpose>(v.clone()).ok()
                })
                .filter(|p| !p.description.trim().is_empty());
            let combined = crate::profile::belief::combined(store, &req.agent)?;
            if combined.is_empty() {
                let purpose = purpose.ok_or_else(|| PreloadError::NoPurpose(req.agent.clone()))?;
                let doc = svc
                    .profile(&ProfileRequest {
                        description: purpose.description,
                        software: purpose.software,
                        data_gb: purpose.data_gb,
                    })
                    .map_err(|e| PreloadError::Profile(e.to_string()))?;
                ("profiler", sources(&doc.preload), doc.preload)
            } else {
                // What the coordinator believes the VM is: the prior on the declared
                // purpose combined with the observed behaviour.
                let personas: Vec<crate::profile::personas::Persona> = svc
                    .db
                    .all()
                    .map_err(|e| PreloadError::Profile(e.to_string()))?
                    .into_iter()
                    .map(|s| s.persona)
                    .collect();
                let dist: Vec<f64> = personas
                    .iter()
                    .map(|p| {
                        combined
                            .iter()
                            .find(|c| c.slug == p.slug)
                            .map_or(0.0, |c| f64::from(c.probability))
                    })
                    .collect();
                let declared = purpose.map(|p| p.software).unwrap_or_default();
                let items = crate::profile::sizing::preload(&dist, &personas, &declared);
                ("combined", sources(&items), items)
            }
        }
    };
    let (mut steps, skipped) = steps_from_items(&items);
    for (i, f) in req.files.iter().enumerate() {
        steps.push(file_step(i, f)?);
    }
    if steps.is_empty() {
        return Err(PreloadError::Empty(format!(
            "no step could be made ({} items skipped)",
            skipped.len()
        )));
    }
    let plan = PreloadPlan {
        persona: personas.first().cloned(),
        steps,
    };
    Ok(PlanDoc {
        agent: req.agent.clone(),
        source: source.into(),
        personas,
        steps: plan.steps.iter().map(PreloadStep::describe).collect(),
        plan,
        skipped,
        dry_run: req.dry_run,
        command: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_resends_only_the_failed_and_unrun_steps() {
        use persona_shared::command::CommandUpdate;
        use persona_shared::preload::{StepResult, StepStatus};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let (token, _) = store.create_token(60_000, 1).unwrap();
        store.enroll(&token, "a-1", "host", "fp").unwrap().unwrap();
        let key = store.agent_key("a-1").unwrap().unwrap();
        let pkg = |n: &str| PreloadStep::Package {
            manager: PackageManager::Apt,
            name: n.into(),
            version: None,
        };
        let old = PreloadPlan {
            persona: Some("web-server".into()),
            steps: vec![pkg("nginx"), pkg("curl"), pkg("jq")],
        };
        let id = crate::commands::submit(
            &store,
            "a-1",
            Action::Preload(old),
            std::time::Duration::from_secs(600),
        )
        .unwrap();
        let req = |retry: &str| PreloadRequest {
            agent: "a-1".into(),
            persona: None,
            files: Vec::new(),
            dry_run: true,
            ttl_s: 600,
            retry: Some(retry.into()),
        };
        // Not finished yet: nothing to retry.
        assert!(matches!(
            plan(&store, None, &req(&id)),
            Err(PreloadError::NotRetriable { .. })
        ));
        let lines = [
            (0, StepStatus::Done),
            (1, StepStatus::Failed),
            (2, StepStatus::NotRun),
        ]
        .map(|(index, status)| {
            StepResult {
                index,
                status,
                detail: "x".into(),
            }
            .line()
        })
        .join("\n");
        let u = CommandUpdate {
            id: id.clone(),
            state: CommandState::Failed,
            at_ms: 0,
            step: None,
            bytes: None,
            percent: None,
            message: Some(format!("1 of 3 steps failed\n{lines}")),
        };
        assert!(crate::commands::apply_update(&store, key, &u).unwrap());
        let doc = plan(&store, None, &req(&id)).unwrap();
        assert_eq!(doc.plan.steps, vec![pkg("curl"), pkg("jq")]);
        assert_eq!(doc.plan.persona.as_deref(), Some("web-server"));
        assert!(doc.source.contains(&id));
        // Another agent's command, or an unknown one, is refused.
        let mut other = req(&id);
        other.agent = "a-2".into();
        assert!(plan(&store, None, &other).is_err());
        assert!(matches!(
            plan(&store, None, &req("c-0000")),
            Err(PreloadError::NotRetriable { .. })
        ));
    }

    fn item(kind: &str, name: &str, version: Option<&str>) -> PlanItem {
        PlanItem {
            kind: kind.into(),
            name: name.into(),
            version: version.map(str::to_owned),
            weight: 1.0,
            from: vec!["x".into()],
        }
    }

    #[test]
    fn manifest_items_become_steps_or_say_why_not() {
        let (steps, skipped) = steps_from_items(&[
            item("deb", "nvidia-driver", Some("550")),
            item("pip", "torch", Some("2.5")),
            item("container", "nvcr.io/nvidia/pytorch", Some("24.10-py3")),
            item("rpm", "numactl", None),
            item("npm", "vite", Some("5")),
            item("dataset", "NYSE TAQ", None),
            item("deb", "foo; rm -rf /", None),
            item("declared", "something", None),
        ]);
        assert_eq!(
            steps,
            vec![
                PreloadStep::Package {
                    manager: PackageManager::Apt,
                    name: "nvidia-driver".into(),
                    version: Some("550".into())
                },
                PreloadStep::Pip {
                    name: "torch".into(),
                    version: Some("2.5".into())
                },
                PreloadStep::Image {
                    reference: "nvcr.io/nvidia/pytorch:24.10-py3".into()
                },
                PreloadStep::Package {
                    manager: PackageManager::Dnf,
                    name: "numactl".into(),
                    version: None
                },
            ]
        );
        assert_eq!(skipped.len(), 4);
        assert!(
            skipped
                .iter()
                .any(|s| s.kind == "npm" && s.reason.contains("protocol"))
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.kind == "dataset" && s.reason.contains("--file"))
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.name == "foo; rm -rf /" && s.reason.contains("Debian"))
        );
    }

    #[test]
    fn operator_files_are_checked() {
        let good = FileSpec {
            url: "https://data.example.com/a.bin".into(),
            sha256: "AB".repeat(32),
            size: 10,
            dest: "/srv/data/a.bin".into(),
        };
        assert!(matches!(
            file_step(0, &good).unwrap(),
            PreloadStep::File { sha256, .. } if sha256 == "ab".repeat(32)
        ));
        for bad in [
            FileSpec {
                url: "file:///etc/passwd".into(),
                ..good.clone()
            },
            FileSpec {
                sha256: "12".into(),
                ..good.clone()
            },
            FileSpec {
                dest: "../../etc/passwd".into(),
                ..good.clone()
            },
            FileSpec {
                dest: "/srv/../etc/passwd".into(),
                ..good.clone()
            },
        ] {
            assert!(file_step(3, &bad).is_err(), "{bad:?}");
        }
    }
}
