//! A download's own bandwidth limit, changed live: SetRateLimit. The limit is a setting like
//! the priority (stored, shown, kept across restarts); what makes it live is that the running
//! attempt's lane in the fetcher's throttle follows it at once, without a new request.

use super::cluster::{Call, Control};
use super::{DownloadView, Engine, validate};
use crate::auth::Caller;
use crate::error::Error;

impl Engine {
    /// Sets a download's own bandwidth limit in bytes/s (0: none); a running transfer follows
    /// it from now on. Its effective rate stays min(this, its share of `--max-download-rate`).
    pub async fn set_rate_limit(
        &self,
        caller: &Caller,
        guid: &str,
        bytes_per_second: u64,
    ) -> Result<DownloadView, Error> {
        // Checked before the download is looked up, as a bad number is wrong anywhere.
        let limit = validate::rate_limit("bytes_per_second", bytes_per_second)?;
        let _held = match self
            .control(caller, guid, Call::SetRateLimit { bytes_per_second })
            .await?
        {
            Control::Here(held) => held,
            Control::Done(view) => return Ok(*view),
        };
        let throttle = &self.inner.throttle;
        let view = self
            .edit(caller, guid, "change the bandwidth limit of", |guid, st| {
                st.settings.max_bytes_per_second = limit;
                // Under the download's lock, as a starting attempt takes its lane: the attempt
                // sees either the old setting and this change, or the new setting.
                throttle.set_limit(guid, limit);
                Ok(())
            })
            .await?;
        let limit = limit.map_or_else(|| "none".into(), |bps| format!("{bps} B/s"));
        tracing::info!(%guid, host = %crate::logging::host_of(&view.settings.requested_uri), %limit, "bandwidth limit set");
        Ok(view)
    }
}
