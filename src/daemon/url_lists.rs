//! `*.urls` files in a watched folder: each URL in a settled list is
//! queued once, however often the list is seen.

use std::path::Path;

use super::{Daemon, STAT_TIMEOUT};

/// A `.urls` list larger than this is read only this far.
const MAX_URL_LIST: u64 = 4 * 1024 * 1024;

impl Daemon {
    /// A settled `*.urls` file: queue each URL in it (each URL once, however
    /// often the list is seen).
    pub(super) async fn ingest_url_list(&self, watch: usize, path: &Path) {
        let Some(root) = self.roots.get(watch) else {
            return;
        };
        let text = {
            let p = path.to_path_buf();
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut text = String::new();
                std::fs::File::open(&p)
                    .and_then(|f| f.take(MAX_URL_LIST).read_to_string(&mut text))
                    .map(|_| text)
            });
            match tokio::time::timeout(STAT_TIMEOUT, read).await {
                Ok(Ok(Ok(text))) => text,
                Ok(Ok(Err(e))) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the URL list");
                    return;
                }
                _ => return,
            }
        };
        let (urls, bad) = crate::pipeline::parse_url_list(&text);
        for (line, reason) in bad {
            tracing::warn!(path = %path.display(), line, reason = %reason, "not a URL; skipped");
        }
        let mut added = 0;
        for url in &urls {
            match self
                .ledger
                .add_url(url, None, root.metadata.as_deref(), Some(&root.origin))
                .await
            {
                Ok((_, true)) => added += 1,
                Ok((_, false)) => {}
                Err(e) => tracing::warn!(url = %url, error = %e, "cannot queue the URL"),
            }
        }
        tracing::info!(path = %path.display(), urls = urls.len(), new = added, "URL list read");
    }
}
