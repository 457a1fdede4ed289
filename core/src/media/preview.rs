//! URL previews: fetch a page (or image) on a user's behalf and describe it with OpenGraph
//! fields.
//!
//! The server must not become a way into its own network: every address a host name resolves
//! to, on every redirect hop, is checked against a blocklist (loopback, private, link-local,
//! unique-local, multicast, documentation ranges, plus configured extras) before connecting,
//! and the connection goes to exactly the checked addresses (no second DNS lookup, no proxy).
//! Redirects are followed here, not by reqwest, so each hop is checked. An allowlist
//! overrides the blocklist (for tests and trusted internal sites).
//!
//! Previews are cached in the database for [`CACHE_FOR`].

use std::{
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use reqwest::{header, redirect::Policy, StatusCode, Url};
use serde_json::{json, Map, Value};

use super::{MediaError, MediaResult, Repo};
use crate::util;

/// How long a fetched preview is served from the cache.
pub const CACHE_FOR: Duration = Duration::from_secs(60 * 60);
const MAX_REDIRECTS: usize = 5;
/// Longest title or description kept.
const MAX_FIELD_CHARS: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct PreviewSettings {
    pub enabled: bool,
    /// Ranges refused on top of the built-in ones.
    pub extra_blocklist: Vec<IpRange>,
    /// Ranges allowed even when blocked.
    pub allowlist: Vec<IpRange>,
    /// Largest page or image fetched, in bytes.
    pub max_size: u64,
    /// Time limit of one whole preview (all hops and the image).
    pub timeout: Duration,
    /// CA certificates trusted besides the public roots (`extra_ca_file`).
    pub extra_roots: Vec<reqwest::Certificate>,
}

/// An address range in CIDR notation (`10.0.0.0/8`, `fe80::/10`, or one address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for IpRange {
    type Err = String;
    fn from_str(s: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpRange { net, prefix })
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net) as u128, u32::from(ip) as u128, self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are checked as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Never fetched from unless allow-listed (Synapse's recommended blacklist, and more).
const DEFAULT_BLOCKLIST: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

impl PreviewSettings {
    /// Whether fetching from `ip` is refused.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        if self.allowlist.iter().any(|r| r.contains(ip)) {
            return false;
        }
        DEFAULT_BLOCKLIST
            .iter()
            .filter_map(|r| r.parse::<IpRange>().ok())
            .any(|r| r.contains(ip))
            || self.extra_blocklist.iter().any(|r| r.contains(ip))
    }
}

/// A fetched response body with its final URL and content type.
struct Fetched {
    url: Url,
    content_type: String,
    body: Vec<u8>,
}

impl Repo {
    /// The preview of `url` for `user_id`, from the cache when fresh.
    pub async fn preview_url(&self, user_id: &str, url: &str) -> MediaResult<Value> {
        let parsed = Url::parse(url).map_err(|_| MediaError::InvalidParam("url is not a valid URL".into()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(MediaError::InvalidParam("url must be an http(s) URL".into()));
        }
        if let Some(cached) = self.cached_preview(url).await? {
            return Ok(cached);
        }
        let settings = &self.settings.preview;
        let og = tokio::time::timeout(settings.timeout, self.build_preview(user_id, parsed))
            .await
            .map_err(|_| MediaError::Upstream("Timed out fetching the URL".into()))??;
        self.cache_preview(url, &og).await?;
        Ok(og)
    }

    async fn build_preview(&self, user_id: &str, url: Url) -> MediaResult<Value> {
        let page = fetch(&self.settings.preview, url).await?;
        if is_image(&page.content_type) {
            let mut og = Map::new();
            self.add_image(user_id, &mut og, &page).await?;
            og.insert("og:url".into(), json!(page.url.as_str()));
            return Ok(Value::Object(og));
        }
        if !is_html(&page.content_type) {
            return Err(MediaError::Upstream(format!(
                "Cannot preview content of type {:?}",
                page.content_type
            )));
        }
        let html = String::from_utf8_lossy(&page.body);
        let mut og = opengraph(&html);
        og.entry("og:url").or_insert_with(|| json!(page.url.as_str()));
        let image_url = og
            .remove("og:image")
            .and_then(|v| v.as_str().and_then(|s| page.url.join(s).ok()));
        for key in [
            "og:image:width",
            "og:image:height",
            "og:image:type",
            "og:image:secure_url",
        ] {
            og.remove(key);
        }
        if let Some(image_url) = image_url {
            // A missing image leaves a preview without one, as Synapse does.
            match fetch(&self.settings.preview, image_url).await {
                Ok(image) if is_image(&image.content_type) => self.add_image(user_id, &mut og, &image).await?,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "URL preview image not fetched"),
            }
        }
        Ok(Value::Object(og))
    }

    /// Stores a fetched image as media and describes it (`og:image` becomes its MXC URI).
    async fn add_image(&self, user_id: &str, og: &mut Map<String, Value>, image: &Fetched) -> MediaResult<()> {
        let content_type = essence(&image.content_type);
        let media_id = self.store_fetched(user_id, &image.body, &content_type).await?;
        og.insert(
            "og:image".into(),
            json!(format!("mxc://{}/{media_id}", self.server_name)),
        );
        og.insert("og:image:type".into(), json!(content_type));
        og.insert("matrix:image:size".into(), json!(image.body.len()));
        let body = image.body.clone();
        let dims = tokio::task::spawn_blocking(move || {
            image::ImageReader::new(std::io::Cursor::new(body))
                .with_guessed_format()
                .ok()?
                .into_dimensions()
                .ok()
        })
        .await
        .ok()
        .flatten();
        if let Some((w, h)) = dims {
            og.insert("og:image:width".into(), json!(w));
            og.insert("og:image:height".into(), json!(h));
        }
        Ok(())
    }

    async fn cached_preview(&self, url: &str) -> MediaResult<Option<Value>> {
        let since = util::now_ms() - CACHE_FOR.as_millis() as i64;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT og FROM media_url_previews WHERE url = $1 AND fetched_ts > $2")
                .bind(url)
                .bind(since)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.and_then(|(og,)| serde_json::from_str(&og).ok()))
    }

    async fn cache_preview(&self, url: &str, og: &Value) -> MediaResult<()> {
        let mut tx = self.db.write().await?;
        sqlx::query(
            "INSERT INTO media_url_previews (url, og, fetched_ts) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO UPDATE SET og = excluded.og, fetched_ts = excluded.fetched_ts",
        )
        .bind(url)
        .bind(og.to_string())
        .bind(util::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_image(content_type: &str) -> bool {
    essence(content_type).starts_with("image/")
}

fn is_html(content_type: &str) -> bool {
    matches!(essence(content_type).as_str(), "text/html" | "application/xhtml+xml")
}

/// GETs `url`, following redirects itself so that each hop's addresses are checked.
async fn fetch(settings: &PreviewSettings, mut url: Url) -> MediaResult<Fetched> {
    for _ in 0..=MAX_REDIRECTS {
        let response = fetch_one(settings, &url).await?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| MediaError::Upstream("Redirect without a Location".into()))?;
            url = url
                .join(location)
                .map_err(|_| MediaError::Upstream("Redirect to an invalid URL".into()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(MediaError::Upstream("Redirect to a non-http(s) URL".into()));
            }
            continue;
        }
        if response.status() != StatusCode::OK {
            return Err(MediaError::Upstream(format!("The URL answered {}", response.status())));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = read_limited(response, settings.max_size).await?;
        return Ok(Fetched {
            url,
            content_type,
            body,
        });
    }
    Err(MediaError::Upstream("Too many redirects".into()))
}

/// One request, to addresses resolved and checked here.
async fn fetch_one(settings: &PreviewSettings, url: &Url) -> MediaResult<reqwest::Response> {
    let host = url
        .host_str()
        .ok_or_else(|| MediaError::InvalidParam("URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs = resolve(settings, host, port).await?;
    let mut builder = reqwest::Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        // Any name not pinned below (there should be none) fails to resolve.
        .dns_resolver(Arc::new(RefuseResolver))
        .user_agent("Weft URL preview");
    for root in &settings.extra_roots {
        builder = builder.add_root_certificate(root.clone());
    }
    let is_ip_literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok();
    if !is_ip_literal {
        builder = builder.resolve_to_addrs(host, &addrs);
    }
    let client = builder
        .build()
        .map_err(|e| crate::Error::internal(format!("HTTP client: {e}")))?;
    client
        .get(url.clone())
        .header(
            header::ACCEPT,
            "text/html, application/xhtml+xml, image/*;q=0.9, */*;q=0.1",
        )
        .send()
        .await
        .map_err(|e| MediaError::Upstream(format!("Failed to fetch the URL: {e}")))
}

/// The addresses of `host`, all of them allowed, or `Forbidden`.
async fn resolve(settings: &PreviewSettings, host: &str, port: u16) -> MediaResult<Vec<SocketAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| MediaError::Upstream(format!("Cannot resolve {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(MediaError::Upstream(format!("{host} has no addresses")));
    }
    // One bad address refuses the host: a name pointing at both a public and an internal
    // address is an attack, not a misconfiguration.
    if let Some(bad) = addrs.iter().find(|a| settings.is_blocked(a.ip())) {
        return Err(MediaError::Forbidden(format!(
            "URL previews of {} are not allowed (IP address blocked)",
            bad.ip()
        )));
    }
    Ok(addrs)
}

struct RefuseResolver;

impl reqwest::dns::Resolve for RefuseResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move { Err(format!("{name} was not resolved by the URL previewer").into()) })
    }
}

/// Reads a body, refusing more than `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: u64) -> MediaResult<Vec<u8>> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(MediaError::Upstream(format!(
            "The content is larger than {limit} bytes"
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| MediaError::Upstream(format!("Failed to read the URL: {e}")))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(MediaError::Upstream(format!(
                "The content is larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

// ----- HTML -----

/// The OpenGraph fields of a page: every `og:*` meta property (first wins), with `<title>` and
/// `<meta name="description">` as fallbacks for title and description.
pub fn opengraph(html: &str) -> Map<String, Value> {
    let scan = scan_html(html);
    let mut og = Map::new();
    let mut description = None;
    for (key, content) in scan.metas {
        let key = key.to_ascii_lowercase();
        if key.starts_with("og:") {
            og.entry(key).or_insert_with(|| json!(truncate(&content)));
        } else if key == "description" && description.is_none() {
            description = Some(content);
        }
    }
    if !og.contains_key("og:title") {
        if let Some(title) = scan.title.filter(|t| !t.is_empty()) {
            og.insert("og:title".into(), json!(truncate(&title)));
        }
    }
    if !og.contains_key("og:description") {
        if let Some(d) = description.filter(|d| !d.is_empty()) {
            og.insert("og:description".into(), json!(truncate(&d)));
        }
    }
    og
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_FIELD_CHARS).collect()
}

#[derive(Default, Debug)]
struct Scan {
    /// (`property` or `name`, `content`) of each `<meta>`.
    metas: Vec<(String, String)>,
    title: Option<String>,
}

/// A small HTML scanner: enough to find `<meta>` and `<title>` robustly (comments, scripts,
/// styles and quoted `>` in attributes are skipped properly), not a full parser.
fn scan_html(html: &str) -> Scan {
    // ASCII lower-casing keeps byte offsets, so searches run on `lower` and slices on `html`.
    let lower = html.to_ascii_lowercase();
    let mut scan = Scan::default();
    let mut i = 0;
    while let Some(off) = lower[i..].find('<') {
        let start = i + off;
        if lower[start..].starts_with("<!--") {
            i = lower[start + 4..].find("-->").map_or(html.len(), |e| start + 4 + e + 3);
            continue;
        }
        let name_start = start + 1;
        let name_len = lower[name_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 {
            // `</x>`, `<!doctype>`, `<?xml>`, or a stray `<`.
            i = name_start;
            continue;
        }
        let name = &lower[name_start..name_start + name_len];
        let (attrs, end) = parse_attributes(html, name_start + name_len);
        i = end;
        match name {
            "meta" => {
                let key = attrs
                    .iter()
                    .find(|(k, _)| k == "property" || k == "name")
                    .map(|(_, v)| v.clone());
                let content = attrs.iter().find(|(k, _)| k == "content").map(|(_, v)| v.clone());
                if let (Some(key), Some(content)) = (key, content) {
                    scan.metas.push((key, content.trim().to_owned()));
                }
            }
            "title" => {
                let close = lower[i..].find("</title").map_or(html.len(), |e| i + e);
                if scan.title.is_none() {
                    scan.title = Some(collapse_whitespace(&decode_entities(&html[i..close])));
                }
                i = close;
            }
            "script" | "style" => {
                let close_tag = format!("</{name}");
                i = lower[i..].find(&close_tag).map_or(html.len(), |e| i + e);
            }
            _ => {}
        }
    }
    scan
}

/// Parses attributes from `pos` (just after a tag name) to the tag's `>`: the attributes
/// (names lower-cased, values entity-decoded) and the offset after the tag.
fn parse_attributes(html: &str, mut pos: usize) -> (Vec<(String, String)>, usize) {
    let bytes = html.as_bytes();
    let mut attrs = Vec::new();
    loop {
        while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'/') {
            pos += 1;
        }
        if pos >= bytes.len() {
            return (attrs, bytes.len());
        }
        if bytes[pos] == b'>' {
            return (attrs, pos + 1);
        }
        let name_start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && !matches!(bytes[pos], b'=' | b'>' | b'/') {
            pos += 1;
        }
        let name = html[name_start..pos].to_ascii_lowercase();
        while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let mut value = String::new();
        if pos < bytes.len() && bytes[pos] == b'=' {
            pos += 1;
            while pos < bytes.len() && bytes[pos].is_ascii_whitespace() {
                pos += 1;
            }
            if pos < bytes.len() && (bytes[pos] == b'"' || bytes[pos] == b'\'') {
                let quote = bytes[pos];
                let value_start = pos + 1;
                let value_end = bytes[value_start..]
                    .iter()
                    .position(|b| *b == quote)
                    .map_or(bytes.len(), |e| value_start + e);
                value = decode_entities(&html[value_start..value_end]);
                pos = (value_end + 1).min(bytes.len());
            } else {
                let value_start = pos;
                while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() && bytes[pos] != b'>' {
                    pos += 1;
                }
                value = decode_entities(&html[value_start..pos]);
            }
        }
        if name.is_empty() {
            // A lone `=` or similar junk: skip one byte so the loop always advances.
            pos += 1;
            continue;
        }
        attrs.push((name, value));
    }
}

/// Decodes the character references pages commonly use in titles and descriptions.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest[1..].find(';').filter(|end| *end <= 10).and_then(|end| {
            let entity = &rest[1..1 + end];
            let ch = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                    .and_then(char::from_u32),
            };
            ch.map(|c| (c, end + 2))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn settings(allow: &[&str]) -> PreviewSettings {
        PreviewSettings {
            allowlist: allow.iter().map(|r| r.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn blocklist_covers_internal_ranges() {
        let s = settings(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(s.is_blocked(ip.parse().unwrap()), "{ip} should be blocked");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"] {
            assert!(!s.is_blocked(ip.parse().unwrap()), "{ip} should be allowed");
        }
        let s = settings(&["127.0.0.1/32"]);
        assert!(!s.is_blocked(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(s.is_blocked(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
        assert!(s.is_blocked(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn ranges_parse_strictly() {
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
        assert!("::/0"
            .parse::<IpRange>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn opengraph_fields_and_fallbacks() {
        let html = r#"<!doctype html><html><head>
            <!-- <meta property="og:title" content="commented out"> -->
            <script>var s = '<meta property="og:title" content="in script">';</script>
            <title> Page &amp; title </title>
            <meta property='og:title' content="Tom &quot;&#233;&#x41;&quot; > more">
            <meta name=description content=plain>
            <META PROPERTY="og:image" CONTENT="/img.png"/>
            </head></html>"#;
        let og = opengraph(html);
        assert_eq!(og["og:title"], "Tom \"éA\" > more");
        assert_eq!(og["og:description"], "plain");
        assert_eq!(og["og:image"], "/img.png");
        let og = opengraph("<title>Only\n a   title</title><meta name=\"description\" content=\"d\">");
        assert_eq!(og["og:title"], "Only a title");
        assert_eq!(og["og:description"], "d");
        // Broken markup never panics.
        for junk in [
            "<",
            "<meta",
            "<meta content=\"",
            "<title>",
            "&#xFFFFFFFF;",
            "<a =>",
            "<meta =x content=y>",
        ] {
            let _ = opengraph(junk);
        }
    }
}
