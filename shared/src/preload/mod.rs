//! The limits and grammars of a pre-load plan that the coordinator (which builds and
//! submits plans) and the agent (which refuses anything outside them) must apply alike,
//! so a plan the coordinator accepts is never refused by the agent for its shape. What
//! this is not: policy (the agent's `policy` decides what a VM allows) or running steps
//! (the agent's `preload`).

pub mod validate;

/// Most steps in one plan.
pub const MAX_STEPS: usize = 256;

/// What happened to one step of a plan, as the agent reports it in the final message
/// (one line per step, [`StepResult::line`]) and the coordinator reads it back to retry
/// only what did not succeed ([`StepResult::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Installed or downloaded.
    Done,
    /// Already present: nothing done.
    Present,
    Failed,
    /// Not reached: the plan was cancelled (or the agent stopped) before it.
    NotRun,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Done => "done",
            StepStatus::Present => "present",
            StepStatus::Failed => "failed",
            StepStatus::NotRun => "not-run",
        }
    }

    fn parse(s: &str) -> Option<StepStatus> {
        Some(match s {
            "done" => StepStatus::Done,
            "present" => StepStatus::Present,
            "failed" => StepStatus::Failed,
            "not-run" => StepStatus::NotRun,
            _ => return None,
        })
    }

    /// Whether a retry should run the step again.
    pub fn needs_retry(self) -> bool {
        matches!(self, StepStatus::Failed | StepStatus::NotRun)
    }
}

/// One line of a plan's result: `step INDEX STATUS: DETAIL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub index: usize,
    pub status: StepStatus,
    pub detail: String,
}

impl StepResult {
    /// `step 3 failed: apt nvidia-driver=550: E: ...` (the detail on one line).
    pub fn line(&self) -> String {
        let detail: String = self
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(500)
            .collect();
        format!("step {} {}: {detail}", self.index, self.status.as_str())
    }

    /// Reads a [`StepResult::line`]; other lines are `None`.
    pub fn parse(line: &str) -> Option<StepResult> {
        let rest = line.trim_start().strip_prefix("step ")?;
        let (index, rest) = rest.split_once(' ')?;
        let (status, detail) = rest.split_once(':')?;
        Some(StepResult {
            index: index.parse().ok()?,
            status: StepStatus::parse(status)?,
            detail: detail.trim().to_owned(),
        })
    }

    /// Every step line of a final message.
    pub fn parse_all(message: &str) -> Vec<StepResult> {
        message.lines().filter_map(StepResult::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_round_trip() {
        let r = StepResult {
            index: 3,
            status: StepStatus::Failed,
            detail: "apt x: E: no\nsecond line".into(),
        };
        let line = r.line();
        assert_eq!(line, "step 3 failed: apt x: E: no second line");
        let back = StepResult::parse(&line).unwrap();
        assert_eq!((back.index, back.status), (3, StepStatus::Failed));
        let msg = format!("2 steps\n{line}\nstep 4 not-run: file x\nnoise");
        let all = StepResult::parse_all(&msg);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|s| s.status.needs_retry()));
    }
}
