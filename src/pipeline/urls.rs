//! URLs to ingest with `method=url`: checking one, and reading a `.urls`
//! list (one URL per line, `#` comments, blank lines ignored).

/// A URL the platform can fetch: http or https, with a host.
pub fn validate(text: &str) -> Result<String, String> {
    let url =
        reqwest::Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "{text:?}: only http and https URLs can be ingested, not {other}:"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url.to_string())
}

/// The name the platform would give a URL's asset: the last non-empty
/// segment of its path, as it is written in the URL; `None` when the path
/// has none (the platform then names it itself).
pub fn filename_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let last = url.path_segments()?.rfind(|s| !s.is_empty())?;
    Some(last.to_owned())
}

/// The URLs of a `.urls` file, and the lines that are not URLs (1-based
/// line number, reason).
pub fn parse_list(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let mut urls = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match validate(line) {
            Ok(u) => {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
            Err(e) => bad.push((i + 1, e)),
        }
    }
    (urls, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_with_a_host() {
        assert_eq!(
            validate("https://cdn.example.com/a.mp4").as_deref(),
            Ok("https://cdn.example.com/a.mp4")
        );
        assert!(validate("http://example.com/x.mov").is_ok());
        assert!(validate("ftp://example.com/a.mp4").is_err());
        assert!(validate("file:///etc/passwd").is_err());
        assert!(validate("not a url").is_err());
        assert!(validate("https://").is_err());
    }

    #[test]
    fn a_url_is_named_after_its_last_path_segment() {
        assert_eq!(
            filename_of("https://cdn.example.com/a/clip%201.mp4?sig=x").as_deref(),
            Some("clip%201.mp4")
        );
        assert_eq!(
            filename_of("https://cdn.example.com/a/b/").as_deref(),
            Some("b")
        );
        assert_eq!(filename_of("https://cdn.example.com/"), None);
        assert_eq!(filename_of("https://cdn.example.com"), None);
    }

    #[test]
    fn lists_skip_comments_blanks_and_repeats() {
        let text = "# camera 1\nhttps://a.example/1.mp4\n\n  https://a.example/2.mp4  \nftp://x/y\nhttps://a.example/1.mp4\n";
        let (urls, bad) = parse_list(text);
        assert_eq!(
            urls,
            vec!["https://a.example/1.mp4", "https://a.example/2.mp4"]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 5);
    }
}
