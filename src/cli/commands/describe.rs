//! How a backup is described in text, shared by the `backup` summary and `info` (the
//! command renderers never import each other).

use crate::repo::manifest::BackupReads;
use crate::units::human_bytes;

/// Where a backup was taken: "from standby HOST:PORT"; None when not recorded.
pub fn taken_on(from_standby: bool, node: Option<&str>) -> Option<String> {
    let role = if from_standby { "standby" } else { "primary" };
    match node {
        Some(node) => Some(format!("from {role} {node}")),
        None if from_standby => Some("from a standby".to_string()),
        None => None,
    }
}

/// What a backup read and, for an incremental, how the block maps chose (one line, or
/// more when the maps missed blocks).
pub fn reads_line(r: &BackupReads) -> String {
    let mut s = format!("read {} from the cluster", human_bytes(r.bytes_read));
    let scanned: u64 = r.files_scanned.values().sum();
    if r.files_mapped + r.files_whole + scanned > 0 {
        s.push_str(&format!(
            "; relation files: {} from block maps, {} scanned",
            r.files_mapped, scanned
        ));
        if r.files_whole > 0 {
            s.push_str(&format!(
                ", {} created after the reference (copied whole)",
                r.files_whole
            ));
        }
        if scanned > 0 {
            let why: Vec<String> = r
                .files_scanned
                .iter()
                .map(|(why, n)| format!("{n}: {why}"))
                .collect();
            s.push_str(&format!(" ({})", why.join("; ")));
        }
        if let Some(check) = &r.map_check {
            s.push_str(&format!(
                "; --block-map-check {check}: {} block(s) checked",
                r.map_checked_blocks
            ));
        }
    }
    s.push('\n');
    for miss in &r.map_misses {
        let shown = &miss.blocks[..miss.blocks.len().min(8)];
        s.push_str(&format!(
            "BLOCK MAP MISS: {} block(s) of {} changed but were not in the maps, e.g. {shown:?} (the file was scanned instead; please report this bug)\n",
            miss.blocks.len(), miss.path
        ));
    }
    s
}
