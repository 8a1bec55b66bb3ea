//! Memory blocks seen from inside the guest (`/sys/devices/system/memory`): the block
//! size, which blocks are online, and the plan that onlines hot-added blocks until the
//! guest has the memory a resize asks for.
//!
//! What it is not: taking memory offline (offlining can stall for minutes while the
//! kernel migrates pages and fail half way; shrinking is the hypervisor's balloon's
//! job), or adding memory (only the hypervisor can).

use std::path::{Path, PathBuf};

use super::error::ActuateError;

const MIB: u64 = 1 << 20;

fn memory_dir(sys_root: &Path) -> PathBuf {
    sys_root.join("devices/system/memory")
}

/// The `state` control file of one block.
pub fn state_file(sys_root: &Path, block: u32) -> PathBuf {
    memory_dir(sys_root).join(format!("memory{block}/state"))
}

/// Block size in bytes (`block_size_bytes` is hexadecimal without a prefix).
pub fn block_size(sys_root: &Path) -> Result<u64, ActuateError> {
    let path = memory_dir(sys_root).join("block_size_bytes");
    let text = std::fs::read_to_string(&path).map_err(|source| ActuateError::Read {
        path: path.clone(),
        source,
    })?;
    u64::from_str_radix(text.trim(), 16)
        .ok()
        .filter(|b| *b >= MIB)
        .ok_or(ActuateError::Parse {
            path,
            detail: format!("{:?} is not a hexadecimal block size", text.trim()),
        })
}

/// Every memory block: (index, online).
pub fn read_blocks(sys_root: &Path) -> Result<Vec<(u32, bool)>, ActuateError> {
    let dir = memory_dir(sys_root);
    let entries = std::fs::read_dir(&dir).map_err(|source| ActuateError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|source| ActuateError::Read {
            path: dir.clone(),
            source,
        })?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("memory"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let f = state_file(sys_root, n);
        let state = std::fs::read_to_string(&f).map_err(|source| ActuateError::Read {
            path: f.clone(),
            source,
        })?;
        // "going-offline" counts as offline: it is on its way out.
        out.push((n, state.trim() == "online"));
    }
    out.sort_unstable();
    Ok(out)
}

/// Online memory in MiB.
pub fn online_mib(blocks: &[(u32, bool)], block_size: u64) -> u64 {
    blocks.iter().filter(|(_, on)| *on).count() as u64 * block_size / MIB
}

/// The blocks to online (lowest first) so that online memory reaches `want_mib`.
/// Refused when more memory is wanted than the blocks hold (the hypervisor must add
/// it first), and when less is wanted than is online by a block or more.
pub fn plan(
    blocks: &[(u32, bool)],
    block_size: u64,
    want_mib: u64,
) -> Result<Vec<u32>, ActuateError> {
    let have = online_mib(blocks, block_size);
    let block_mib = block_size / MIB;
    if want_mib + block_mib <= have {
        return Err(ActuateError::Unsupported(format!(
            "memory {have} -> {want_mib} MiB: the guest actuator does not take memory offline (use the hypervisor's balloon)"
        )));
    }
    let total = blocks.len() as u64 * block_mib;
    if want_mib > total {
        return Err(ActuateError::Unsupported(format!(
            "{want_mib} MiB wanted but the guest has {total} MiB of memory blocks: the hypervisor must hot-add memory first"
        )));
    }
    let need = want_mib.saturating_sub(have).div_ceil(block_mib) as usize;
    Ok(blocks
        .iter()
        .filter(|(_, on)| !on)
        .map(|(n, _)| *n)
        .take(need)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_online_the_lowest_offline_blocks() {
        let bs = 128 * MIB;
        let blocks = [(0, true), (1, true), (2, false), (3, false), (4, false)];
        assert_eq!(online_mib(&blocks, bs), 256);
        assert_eq!(plan(&blocks, bs, 512).unwrap(), [2, 3]);
        assert_eq!(plan(&blocks, bs, 300).unwrap(), [2]);
        assert!(plan(&blocks, bs, 256).unwrap().is_empty());
        // A target inside the last online block is met already.
        assert!(plan(&blocks, bs, 200).unwrap().is_empty());
        assert!(matches!(
            plan(&blocks, bs, 1024),
            Err(ActuateError::Unsupported(_))
        ));
        assert!(matches!(
            plan(&blocks, bs, 128),
            Err(ActuateError::Unsupported(_))
        ));
    }
}
