//! How things look: status names and words, byte counts, the `ls` table, `info` and
//! `system status` as text, and every `--json` object. JSON field names are the protocol's
//! (snake case), statuses are the enum names without their prefix (`RUNNING`), byte counts are
//! numbers.

use indicatif::HumanBytes;
use serde_json::{Value, json};
use transferd::pb::backgroundtransfer::v1 as pb;

use pb::BackgroundTransferStatus as S;

/// The status of `op` (the server always sends progress; a missing one reads as IDLE).
pub fn status_of(op: &pb::DownloadOperation) -> S {
    op.progress.as_ref().map_or(S::Idle, |p| p.status())
}

/// Whether a status is final: the download will not change any more.
pub fn is_terminal(status: S) -> bool {
    matches!(status, S::Completed | S::Canceled | S::Error)
}

/// The protocol's name of a status without its prefix: `RUNNING`, `PAUSED_NO_NETWORK`.
pub fn status_name(status: S) -> &'static str {
    let full = status.as_str_name();
    full.strip_prefix("BACKGROUND_TRANSFER_STATUS_")
        .unwrap_or(full)
}

/// A status in a few words for people: `running`, `paused: no network`.
pub fn status_words(status: S) -> &'static str {
    match status {
        S::Idle => "queued",
        S::Running => "running",
        S::PausedByApplication => "paused",
        S::PausedCostedNetwork => "paused: costed network",
        S::PausedNoNetwork => "paused: no network",
        S::Completed => "completed",
        S::Canceled => "canceled",
        S::Error => "error",
        S::PausedRecoverableWebErrorStatus => "paused: web error status",
        S::PausedSystemPolicy => "paused: system policy",
    }
}

/// `received of total (pct%)`, or `received (unknown size)` while the total is unknown.
pub fn amount(progress: &pb::BackgroundDownloadProgress) -> String {
    let received = HumanBytes(progress.bytes_received);
    match percent(progress) {
        Some(pct) => format!(
            "{received} of {} ({pct}%)",
            HumanBytes(progress.total_bytes_to_receive)
        ),
        None => format!("{received} (unknown size)"),
    }
}

/// Whole percent received, or `None` while the size is unknown.
pub fn percent(progress: &pb::BackgroundDownloadProgress) -> Option<u64> {
    let total = progress.total_bytes_to_receive;
    (total > 0).then(|| (u128::from(progress.bytes_received) * 100 / u128::from(total)) as u64)
}

/// One progress message of `guid` as JSON, for `get --json` and `watch --json`.
pub fn progress_json(guid: &str, progress: &pb::BackgroundDownloadProgress) -> Value {
    let pb::BackgroundDownloadProgress {
        bytes_received,
        total_bytes_to_receive,
        status: _,
        has_response_changed,
        has_restarted,
    } = progress;
    json!({
        "guid": guid,
        "status": status_name(progress.status()),
        "bytes_received": bytes_received,
        "total_bytes_to_receive": total_bytes_to_receive,
        "has_response_changed": has_response_changed,
        "has_restarted": has_restarted,
    })
}

/// A whole download as JSON. Every field is named here, so a new protocol field is a compile
/// error until it is shown.
pub fn operation_json(op: &pb::DownloadOperation) -> Value {
    let pb::DownloadOperation {
        guid,
        requested_uri,
        result_file,
        priority: _,
        cost_policy: _,
        transfer_group,
        progress,
        error,
        request_headers,
        attempt_count,
        expected_sha256,
        recoverable_web_error_statuses,
        current_web_error_status,
        status_reason: _,
        max_bytes,
        replace_existing,
        sensitive_headers,
        tenant,
        max_bytes_per_second,
    } = op;
    let progress = progress.unwrap_or_default();
    let error = error.as_ref().map(|e| {
        json!({
            "message": e.message,
            "http_status_code": e.http_status_code,
            "reason": short(e.reason().as_str_name(), "TRANSFER_ERROR_REASON_"),
        })
    });
    json!({
        "guid": guid,
        "requested_uri": requested_uri,
        "result_file": result_file,
        "status": status_name(progress.status()),
        "status_reason": short(op.status_reason().as_str_name(), "STATUS_REASON_"),
        "bytes_received": progress.bytes_received,
        "total_bytes_to_receive": progress.total_bytes_to_receive,
        "priority": short(op.priority().as_str_name(), "BACKGROUND_TRANSFER_PRIORITY_"),
        "cost_policy": short(op.cost_policy().as_str_name(), "BACKGROUND_TRANSFER_COST_POLICY_"),
        "transfer_group": transfer_group,
        "tenant": tenant,
        "error": error,
        "request_headers": request_headers,
        "sensitive_headers": sensitive_headers,
        "attempt_count": attempt_count,
        "expected_sha256": expected_sha256,
        "recoverable_web_error_statuses": recoverable_web_error_statuses,
        "current_web_error_status": current_web_error_status,
        "max_bytes": max_bytes,
        "max_bytes_per_second": max_bytes_per_second,
        "replace_existing": replace_existing,
    })
}

/// The last HTTP response of a download as JSON.
pub fn response_json(info: &pb::ResponseInformation) -> Value {
    let pb::ResponseInformation {
        is_resumable,
        actual_uri,
        status_code,
        headers,
    } = info;
    json!({
        "is_resumable": is_resumable,
        "actual_uri": actual_uri,
        "status_code": status_code,
        "headers": headers,
    })
}

/// The server's view of the host as JSON.
pub fn system_json(s: &pb::SystemStatus) -> Value {
    let pb::SystemStatus {
        connected,
        connected_source: _,
        costed,
        costed_source: _,
        constrained,
        free_disk_bytes,
        min_free_disk_bytes,
        low_disk_space,
        active_downloads,
        queued_downloads,
    } = s;
    json!({
        "connected": connected,
        "connected_source": short(s.connected_source().as_str_name(), "CONDITION_SOURCE_"),
        "costed": costed,
        "costed_source": short(s.costed_source().as_str_name(), "CONDITION_SOURCE_"),
        "constrained": constrained,
        "free_disk_bytes": free_disk_bytes,
        "min_free_disk_bytes": min_free_disk_bytes,
        "low_disk_space": low_disk_space,
        "active_downloads": active_downloads,
        "queued_downloads": queued_downloads,
    })
}

/// The server's view of the host, for people.
pub fn system_text(s: &pb::SystemStatus) -> String {
    let source = |c: pb::ConditionSource| match c {
        pb::ConditionSource::Detected => "detected",
        pb::ConditionSource::Operator => "set by an operator",
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    format!(
        "network connected: {} ({})\nnetwork costed:    {} ({})\nconstrained mode:  {}\n\
         free disk:         {} (downloads pause below {}){}\ndownloads:         {} active, {} queued",
        yes(s.connected),
        source(s.connected_source()),
        yes(s.costed),
        source(s.costed_source()),
        yes(s.constrained),
        HumanBytes(s.free_disk_bytes),
        HumanBytes(s.min_free_disk_bytes),
        if s.low_disk_space { " LOW" } else { "" },
        s.active_downloads,
        s.queued_downloads,
    )
}

/// The `ls` table: one row per download, in the order given.
pub fn table(ops: &[pb::DownloadOperation]) -> String {
    let rows: Vec<[String; 5]> = ops
        .iter()
        .map(|op| {
            let progress = op.progress.unwrap_or_default();
            let done = match percent(&progress) {
                Some(pct) => format!("{pct}%"),
                None => "?".into(),
            };
            [
                op.guid.clone(),
                status_name(progress.status()).into(),
                format!("{done} of {}", size(&progress)),
                op.transfer_group.clone(),
                op.result_file.clone(),
            ]
        })
        .collect();
    let header = ["GUID", "STATUS", "PROGRESS", "GROUP", "RESULT FILE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned() + "\n"
        })
        .collect()
}

/// The size of a download for people, `?` while unknown.
fn size(progress: &pb::BackgroundDownloadProgress) -> String {
    match progress.total_bytes_to_receive {
        0 => "?".into(),
        total => HumanBytes(total).to_string(),
    }
}

/// One download and its last response, for people (`info`).
pub fn info_text(op: &pb::DownloadOperation, response: Option<&pb::ResponseInformation>) -> String {
    let progress = op.progress.unwrap_or_default();
    let mut out = format!(
        "guid:          {}\nuri:           {}\nresult file:   {}\nstatus:        {} ({})\n\
         progress:      {}\nattempts:      {}\n",
        op.guid,
        op.requested_uri,
        op.result_file,
        status_name(progress.status()),
        short(op.status_reason().as_str_name(), "STATUS_REASON_"),
        amount(&progress),
        op.attempt_count,
    );
    let optional = [
        ("group", op.transfer_group.clone()),
        ("tenant", op.tenant.clone()),
        ("sha256", op.expected_sha256.clone()),
    ];
    for (name, value) in optional.iter().filter(|(_, v)| !v.is_empty()) {
        out += &format!("{:<15}{value}\n", format!("{name}:"));
    }
    if let Some(e) = &op.error {
        out += &format!("error:         {}\n", e.message);
    }
    let mut request_headers: Vec<_> = op.request_headers.iter().collect();
    request_headers.sort();
    for (name, value) in request_headers {
        out += &format!("request header: {name}: {value}\n");
    }
    match response {
        Some(r) => {
            out += &format!(
                "response:      {} from {} (resumable: {})\n",
                r.status_code,
                r.actual_uri,
                if r.is_resumable { "yes" } else { "no" }
            );
            let mut headers: Vec<_> = r.headers.iter().collect();
            headers.sort();
            for (name, value) in headers {
                out += &format!("  {name}: {value}\n");
            }
        }
        None => out += "response:      none yet\n",
    }
    out
}

/// An enum's protocol name without its prefix.
fn short(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(received: u64, total: u64) -> pb::BackgroundDownloadProgress {
        pb::BackgroundDownloadProgress {
            bytes_received: received,
            total_bytes_to_receive: total,
            status: S::Running.into(),
            ..Default::default()
        }
    }

    #[test]
    fn amounts_say_percent_or_unknown_size() {
        assert_eq!(amount(&progress(512, 2048)), "512 B of 2.00 KiB (25%)");
        assert_eq!(amount(&progress(1536, 0)), "1.50 KiB (unknown size)");
        // No overflow at the largest sizes the protocol carries.
        assert_eq!(percent(&progress(u64::MAX - 1, u64::MAX)), Some(99));
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let op = |guid: &str, file: &str, p| pb::DownloadOperation {
            guid: guid.into(),
            result_file: file.into(),
            progress: Some(p),
            ..Default::default()
        };
        let ops = [
            op("a", "x.bin", progress(1, 4)),
            op("bbbb", "y", progress(0, 0)),
        ];
        assert_eq!(
            table(&ops),
            "GUID  STATUS   PROGRESS    GROUP  RESULT FILE\n\
             a     RUNNING  25% of 4 B         x.bin\n\
             bbbb  RUNNING  ? of ?             y\n"
        );
    }
}
