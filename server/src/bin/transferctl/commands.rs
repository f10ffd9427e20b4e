//! One function per subcommand: each makes its calls through the library's [`Client`] and
//! prints the answer as text for people or, with `--json`, one JSON object per line.

use std::io::Write as _;

use serde_json::json;
use transferd::client::Client;
use transferd::pb::backgroundtransfer::v1 as pb;

use crate::args::{Condition, GetArgs, Policy, StatusFilter};
use crate::display::{Display, Mode};
use crate::failure::{CallContext, Outcome, emit};
use crate::follow::{OnInterrupt, follow};
use crate::render::{self, is_terminal, status_of};

/// `get`: queues a download and, unless detached, follows it to its end.
pub async fn get(client: &Client, args: GetArgs, json: bool) -> anyhow::Result<Outcome> {
    let GetArgs {
        url,
        output,
        group,
        priority,
        sha256,
        detach,
    } = args;
    let request = pb::CreateDownloadRequest {
        requested_uri: url.clone(),
        result_file: output.unwrap_or_default(),
        priority: priority.map_or(pb::BackgroundTransferPriority::Default, Into::into) as i32,
        transfer_group: group.unwrap_or_default(),
        expected_sha256: sha256.unwrap_or_default(),
        ..Default::default()
    };
    let op = client.create(request).await.call(format!("get {url}"))?;
    if detach {
        match json {
            true => emit(render::operation_json(&op)),
            false => emit(&op.guid),
        }
        return Ok(Outcome::Done);
    }
    let mode = Mode::pick(json);
    if mode != Mode::Json {
        eprintln!("{} -> {}", op.guid, op.result_file);
    }
    let mut display = Display::new(mode);
    let targets = [(op.guid.clone(), op.result_file.clone())];
    follow(client, &targets, &mut display, OnInterrupt::Ask).await
}

/// `watch`: follows the named downloads, or every live one (of `group`), to their end.
pub async fn watch(
    client: &Client,
    guids: Vec<String>,
    group: Option<String>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let ops = match guids.is_empty() {
        true => {
            let all = client
                .list_all(group.as_deref())
                .await
                .call("list downloads")?;
            all.into_iter()
                .filter(|op| !is_terminal(status_of(op)))
                .collect()
        }
        false => {
            let mut ops = Vec::with_capacity(guids.len());
            for guid in &guids {
                ops.push(client.get(guid).await.call(format!("watch {guid}"))?);
            }
            ops
        }
    };
    if ops.is_empty() {
        eprintln!("no live downloads to watch");
        return Ok(Outcome::Done);
    }
    let targets: Vec<(String, String)> = ops
        .into_iter()
        .map(|op| (op.guid, op.result_file))
        .collect();
    let mut display = Display::new(Mode::pick(json));
    follow(client, &targets, &mut display, OnInterrupt::Stop).await
}

/// `ls`: every download (of `group`, in `status`), newest first.
pub async fn ls(
    client: &Client,
    status: Option<StatusFilter>,
    group: Option<String>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let mut ops = client
        .list_all(group.as_deref())
        .await
        .call("list downloads")?;
    // The server lists in creation order; people want the latest first.
    ops.reverse();
    if let Some(status) = status {
        let wanted = pb::BackgroundTransferStatus::from(status);
        ops.retain(|op| status_of(op) == wanted);
    }
    match json {
        true => ops.iter().for_each(|op| emit(render::operation_json(op))),
        false => emit(render::table(&ops).trim_end()),
    }
    Ok(Outcome::Done)
}

/// A control that applies to one download at a time.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

/// `pause`, `resume`, `cancel`: each download in turn; stops at the first refusal.
pub async fn control(
    client: &Client,
    control: Control,
    guids: &[String],
    json: bool,
) -> anyhow::Result<Outcome> {
    for guid in guids {
        let (verb, result) = match control {
            Control::Pause => ("pause", client.pause(guid).await),
            Control::Resume => ("resume", client.resume(guid).await),
            Control::Cancel => ("cancel", client.cancel(guid).await),
        };
        let op = result.call(format!("{verb} {guid}"))?;
        print_status(&op, json);
    }
    Ok(Outcome::Done)
}

/// `rm`: forgets finished downloads, and with `delete_file` their result files.
pub async fn rm(
    client: &Client,
    guids: &[String],
    delete_file: bool,
    json: bool,
) -> anyhow::Result<Outcome> {
    for guid in guids {
        let answer = client
            .delete(guid, delete_file)
            .await
            .call(format!("rm {guid}"))?;
        match json {
            true => emit(json!({"guid": guid, "result_file_deleted": answer.result_file_deleted})),
            false => emit(format!(
                "{guid} removed{}",
                match answer.result_file_deleted {
                    true => " with its result file",
                    false => "",
                }
            )),
        }
    }
    Ok(Outcome::Done)
}

/// `info`: the download and its last HTTP response (none before the first response).
pub async fn info(client: &Client, guid: &str, json: bool) -> anyhow::Result<Outcome> {
    let op = client.get(guid).await.call(format!("info {guid}"))?;
    // A download that has not had a response yet has no information to show: not an error.
    let response = client.response_information(guid).await.ok();
    match json {
        true => {
            let mut value = render::operation_json(&op);
            value["response"] = response
                .as_ref()
                .map_or(serde_json::Value::Null, render::response_json);
            emit(value);
        }
        false => emit(render::info_text(&op, response.as_ref()).trim_end()),
    }
    Ok(Outcome::Done)
}

/// `cat`: the result's bytes, as the server streams them, to standard output. A reader that
/// went away (`| head`) ends it quietly, as it ends `cat`.
pub async fn cat(
    client: &Client,
    guid: &str,
    (offset, length): (u64, u64),
    follow: bool,
) -> anyhow::Result<Outcome> {
    let what = || format!("read the result of {guid}");
    let mut chunks = client
        .read_result(guid, offset, length, follow)
        .await
        .call(what())?;
    let mut out = std::io::stdout();
    while let Some(chunk) = chunks.message().await.call(what())? {
        if let Err(e) = out.write_all(&chunk.data).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(Outcome::Done);
            }
            anyhow::bail!("cannot write to standard output: {e}");
        }
    }
    Ok(Outcome::Done)
}

/// `system status`.
pub async fn system_status(client: &Client, json: bool) -> anyhow::Result<Outcome> {
    let status = client.system_status().await.call("system status")?;
    print_system(&status, json);
    Ok(Outcome::Done)
}

/// `system set-network`: an omitted condition keeps its current setting (an operator's value
/// stays, a detected one stays detected), because the call itself would hand it back to
/// detection.
pub async fn set_network(
    client: &Client,
    connected: Option<Condition>,
    costed: Option<Condition>,
    json: bool,
) -> anyhow::Result<Outcome> {
    let now = client.system_status().await.call("system status")?;
    let keep = |value: bool, source: pb::ConditionSource| {
        (source == pb::ConditionSource::Operator).then_some(value)
    };
    let connected = connected.map_or_else(
        || keep(now.connected, now.connected_source()),
        Condition::wire,
    );
    let costed = costed.map_or_else(|| keep(now.costed, now.costed_source()), Condition::wire);
    let status = client
        .set_network_conditions(connected, costed)
        .await
        .call("system set-network")?;
    print_system(&status, json);
    Ok(Outcome::Done)
}

/// `system set-policy`.
pub async fn set_policy(client: &Client, policy: Policy, json: bool) -> anyhow::Result<Outcome> {
    let constrained = matches!(policy, Policy::Constrained);
    let status = client
        .set_system_policy(constrained)
        .await
        .call("system set-policy")?;
    print_system(&status, json);
    Ok(Outcome::Done)
}

fn print_system(status: &pb::SystemStatus, json: bool) {
    match json {
        true => emit(render::system_json(status)),
        false => emit(render::system_text(status)),
    }
}

/// One line per controlled download: its guid and new status.
fn print_status(op: &pb::DownloadOperation, json: bool) {
    match json {
        true => emit(render::operation_json(op)),
        false => emit(format!(
            "{} {}",
            op.guid,
            render::status_name(status_of(op))
        )),
    }
}
