//! One access-log line as nginx sends it to the agent: the format nginx is told to write, and the
//! parser of what arrives.
//!
//! The parser is a small scanner over the flat JSON object of [`INSIGHT_LOG_FORMAT`]: it borrows
//! from the line (no allocation), never panics, and refuses what it does not expect rather
//! than guessing. The caller counts what it refuses and drops the line.

use thiserror::Error;

/// The `log_format` of the lines the agent ingests: the text after
/// `log_format smartproxy_insight escape=json `, one single-quoted nginx string.
///
/// Only what insight needs: the routed domain (`$server_name`, set by the config, so its
/// cardinality is bounded by the route table; `$host` would be whatever clients send), the status,
/// the bytes sent, the request time and the upstream lists. No request line, no client address and
/// no header: hostile request data never reaches the agent this way. `escape=json` makes every
/// variable a valid JSON string body, and an unset variable an empty string.
pub const INSIGHT_LOG_FORMAT: &str = r#"'{"d":"$server_name","s":$status,"b":$bytes_sent,"t":$request_time,"ua":"$upstream_addr","us":"$upstream_status","ut":"$upstream_response_time"}'"#;

/// The `log_format` of each domain's JSON access log (`logger-json`, `ACCESS_LOG_FILES`) in the
/// servers that serve the domain: the seed's fields, then the upstream statuses and times that
/// insight needs besides. When nginx is the agent's own, the agent reads these files
/// ([`parse_access`]) and nginx writes no second line per request. `$host` (`domain`) is what the
/// client sent and is never read here: a line's domain is its file's.
pub const ACCESS_LOG_FORMAT: &str = r#"'{"time":"$time_iso8601","remote_addr":"$remote_addr","request":"$request","status":$status,"bytes_sent":$bytes_sent,"domain":"$host","upstream":"$upstream_addr","request_time":$request_time,"upstream_status":"$upstream_status","upstream_response_time":"$upstream_response_time"}'"#;

/// The `log_format` of the same files in a server that only redirects to HTTPS
/// (`logger-json-redirect`): the seed's fields. Its lines carry no `upstream_status`, which is how
/// [`parse_access`] tells them apart (each visit is counted once, where it is served).
pub const REDIRECT_LOG_FORMAT: &str = r#"'{"time":"$time_iso8601","remote_addr":"$remote_addr","request":"$request","status":$status,"bytes_sent":$bytes_sent,"domain":"$host","upstream":"$upstream_addr","request_time":$request_time}'"#;

/// Lines of a domain's access log longer than this are refused unread: they hold the request
/// line (at most `large_client_header_buffers`, 8 KiB by default, up to six times that once
/// escaped) and the client's address.
pub const MAX_ACCESS_LINE: usize = 64 * 1024;

/// Lines longer than this are refused unread. A line of [`INSIGHT_LOG_FORMAT`] is about
/// 150 bytes plus the domain (at most 253) and about 40 bytes per upstream attempt: 8 KiB holds
/// some 190 attempts, far more than any `proxy_next_upstream_tries`, and bounds the work per line.
pub const MAX_LINE: usize = 8 * 1024;

/// Why a line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Malformed {
    #[error("line over {MAX_LINE} bytes")]
    Oversized,
    #[error("not a JSON object of the insight log format")]
    Syntax,
    #[error("field `{0}` missing")]
    Missing(&'static str),
    #[error("field `{0}` out of range")]
    Value(&'static str),
}

/// One parsed line. Strings borrow from the line; the upstream lists are kept as nginx wrote
/// them and read through [`Entry::attempts`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    /// `$server_name`, as written (an escaped character stays escaped: such a name is never routed).
    pub domain: &'a str,
    /// `$status`, 100..=599.
    pub status: u16,
    /// `$bytes_sent`.
    pub bytes: u64,
    /// `$request_time`, in microseconds (nginx writes milliseconds).
    pub request_us: u64,
    /// `$upstream_addr`, raw (empty or `-` without upstream); read through [`Entry::attempts`].
    pub upstream_addr: &'a str,
    /// `$upstream_status`, raw.
    pub upstream_status: &'a str,
    /// `$upstream_response_time`, raw.
    pub upstream_time: &'a str,
}

/// One try of an upstream server, in the order nginx made them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// The server's address (`10.0.0.1:80`, `unix:/run/app.sock`), or the upstream's name when no
    /// server could be chosen.
    pub addr: &'a str,
    /// Its status; `None` when nginx logged `-` (no response).
    pub status: Option<u16>,
    /// Its response time in microseconds; `None` when unknown.
    pub time_us: Option<u64>,
    /// True for the last try of its group: the one that answered (the client, or the internal
    /// redirect that followed, ` : `). nginx only tries the next server after a failure.
    pub answered: bool,
    /// True for the last attempt of all, the one whose answer the client got.
    pub last: bool,
}

impl Attempt<'_> {
    /// A try that failed against its server: one nginx moved on from (retried elsewhere), or an
    /// answering one with 502 (bad gateway: refused, reset) or 504 (timeout).
    pub fn failed(&self) -> bool {
        !self.answered || matches!(self.status, Some(502 | 504))
    }

    /// A try that timed out (504).
    pub fn timed_out(&self) -> bool {
        self.status == Some(504)
    }
}

impl<'a> Entry<'a> {
    /// The upstream attempts, paired up across the three lists (a missing item is `None`). Retries
    /// are separated by `, ` and internal redirects by ` : `; both are attempts here. Empty when
    /// the request reached no upstream (`-` or empty).
    pub fn attempts(&self) -> Attempts<'a> {
        let none = |s: &'a str| if s == "-" { "" } else { s };
        Attempts {
            addr: Items(none(self.upstream_addr)),
            status: Items(self.upstream_status),
            time: Items(self.upstream_time),
        }
    }

    /// The upstream response time of the answering attempt, in microseconds. With internal
    /// redirects or retries nginx lists one time per try; the last is the one the client waited on
    /// after the others.
    pub fn upstream_us(&self) -> Option<u64> {
        Items(self.upstream_time).last().and_then(time_us)
    }
}

/// Iterator of [`Attempt`]s, from [`Entry::attempts`].
#[derive(Debug, Clone)]
pub struct Attempts<'a> {
    addr: Items<'a>,
    status: Items<'a>,
    time: Items<'a>,
}

impl<'a> Iterator for Attempts<'a> {
    type Item = Attempt<'a>;

    fn next(&mut self) -> Option<Attempt<'a>> {
        let addr = self.addr.next()?;
        let status = self.status.next().and_then(|s| s.parse::<u16>().ok());
        let time_us = self.time.next().and_then(time_us);
        let last = self.addr.clone().next().is_none();
        Some(Attempt { addr, status, time_us, answered: last || self.addr.at_group_end(), last })
    }
}

/// The items of an nginx upstream list: split at `,` and at ` : `, trimmed, empty ones skipped.
#[derive(Debug, Clone)]
struct Items<'a>(&'a str);

impl<'a> Iterator for Items<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let rest = self.0.trim_start_matches([' ', ',']);
            let rest = rest.strip_prefix(": ").unwrap_or(rest).trim_start_matches([' ', ',']);
            if rest.is_empty() {
                self.0 = "";
                return None;
            }
            // An item ends at a comma or at " : " (an address itself holds ':' without spaces).
            let b = rest.as_bytes();
            let end = (0..b.len())
                .find(|&i| b[i] == b',' || (b[i] == b' ' && b.get(i + 1) == Some(&b':') && b.get(i + 2) == Some(&b' ')))
                .unwrap_or(b.len());
            let (item, tail) = rest.split_at(end);
            self.0 = tail;
            let item = item.trim();
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

impl Items<'_> {
    /// Whether the item just read closed its group (what follows is ` : ` or nothing).
    fn at_group_end(&self) -> bool {
        let rest = self.0.trim_start_matches(' ');
        rest.starts_with(':') || rest.trim_start_matches([' ', ',']).is_empty()
    }
}

/// Parses one line of [`INSIGHT_LOG_FORMAT`] (without its newline), after an optional syslog
/// header (`<190>Dec  5 22:00:00 smartproxy: `, as a custom template's `syslog:` log sends it).
pub fn parse(line: &[u8]) -> Result<Entry<'_>, Malformed> {
    if line.len() > MAX_LINE {
        return Err(Malformed::Oversized);
    }
    let fields = fields(line)?;
    if fields.d.is_none() {
        return Err(Malformed::Missing("d"));
    }
    entry(&fields)
}

/// Parses one line of a domain's access log ([`ACCESS_LOG_FORMAT`]); its `domain` is left empty
/// (the caller knows the file's). `None` for a line without `upstream_status`: one written by
/// the server that redirects to HTTPS ([`REDIRECT_LOG_FORMAT`]), or by a template of its own.
pub fn parse_access(line: &[u8]) -> Result<Option<Entry<'_>>, Malformed> {
    if line.len() > MAX_ACCESS_LINE {
        return Err(Malformed::Oversized);
    }
    access_entry(match as_written(line) {
        Some(fields) => fields,
        None => fields(line)?,
    })
}

/// The entry of an access-log line's fields; `None` without `upstream_status` (a redirect line).
fn access_entry(fields: Fields<'_>) -> Result<Option<Entry<'_>>, Malformed> {
    if fields.us.is_none() {
        return Ok(None);
    }
    entry(&Fields { d: None, ..fields }).map(Some)
}

/// The keys of [`ACCESS_LOG_FORMAT`] in its order, each with whether its value is a string.
const ACCESS_KEYS: [(&[u8], bool); 10] = [
    (b"time", true),
    (b"remote_addr", true),
    (b"request", true),
    (b"status", false),
    (b"bytes_sent", false),
    (b"domain", true),
    (b"upstream", true),
    (b"request_time", false),
    (b"upstream_status", true),
    (b"upstream_response_time", true),
];

/// How many of [`ACCESS_KEYS`] [`REDIRECT_LOG_FORMAT`] has.
const REDIRECT_KEYS: usize = 8;

/// The fields of a line exactly as nginx writes [`ACCESS_LOG_FORMAT`] or [`REDIRECT_LOG_FORMAT`] (its keys in order, no
/// space): each key is checked in place rather than read and looked up, about half the work of
/// [`fields`] on the agent's busiest path. `None` for anything else, which [`fields`] then reads
/// (what this accepts, [`fields`] reads the same).
fn as_written(line: &[u8]) -> Option<Fields<'_>> {
    let mut s = Scanner { bytes: line, at: 0 };
    let mut values = [None; ACCESS_KEYS.len()];
    for (i, &(key, string)) in ACCESS_KEYS.iter().enumerate() {
        if i == REDIRECT_KEYS && s.bytes.get(s.at) == Some(&b'}') {
            break; // REDIRECT_LOG_FORMAT: no upstream status.
        }
        s.expect(if i == 0 { b'{' } else { b',' }).ok()?;
        s.expect(b'"').ok()?;
        let rest = s.bytes.get(s.at..)?;
        if !(rest.starts_with(key) && rest.get(key.len()..key.len() + 2) == Some(b"\":")) {
            return None;
        }
        s.at += key.len() + 2;
        let first = *s.bytes.get(s.at)?;
        if (first == b'"') != string {
            return None;
        }
        values[i] = Some(s.value().ok()?);
    }
    s.expect(b'}').ok()?;
    if s.at != line.len() {
        return None;
    }
    let [_, _, _, status, bytes, _, upstream, time, upstream_status, upstream_time] = values;
    Some(Fields {
        s: status,
        b: bytes,
        t: time,
        ua: upstream,
        us: upstream_status,
        ut: upstream_time,
        ..Fields::default()
    })
}

/// The fields of a flat JSON object, by the short names of [`INSIGHT_LOG_FORMAT`] or the long
/// ones of [`ACCESS_LOG_FORMAT`].
fn fields(line: &[u8]) -> Result<Fields<'_>, Malformed> {
    let mut body = line;
    if body.first() == Some(&b'<') {
        // The header (priority, time, tag) never holds a brace; the JSON starts at the first one.
        let start = body.iter().position(|&b| b == b'{').ok_or(Malformed::Syntax)?;
        body = &body[start..];
    }
    let mut s = Scanner { bytes: body, at: 0 };
    let mut fields = Fields::default();
    s.ws();
    s.expect(b'{')?;
    s.ws();
    if !s.eat(b'}') {
        loop {
            s.ws();
            let key = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let value = s.value()?;
            let slot = match key {
                b"d" => &mut fields.d,
                b"s" | b"status" => &mut fields.s,
                b"b" | b"bytes_sent" => &mut fields.b,
                b"t" | b"request_time" => &mut fields.t,
                b"ua" | b"upstream" => &mut fields.ua,
                b"us" | b"upstream_status" => &mut fields.us,
                b"ut" | b"upstream_response_time" => &mut fields.ut,
                _ => &mut fields.other,
            };
            *slot = Some(value);
            s.ws();
            if s.eat(b'}') {
                break;
            }
            s.expect(b',')?;
        }
    }
    s.ws();
    if s.at != s.bytes.len() {
        return Err(Malformed::Syntax);
    }
    Ok(fields)
}

fn entry<'a>(fields: &Fields<'a>) -> Result<Entry<'a>, Malformed> {
    let status = integer(number(fields.s, "s")?).filter(|s| (100..=599).contains(s)).ok_or(Malformed::Value("s"))?;
    Ok(Entry {
        domain: text(fields.d, "d")?,
        status: status as u16,
        bytes: integer(number(fields.b, "b")?).ok_or(Malformed::Value("b"))?,
        request_us: std::str::from_utf8(number(fields.t, "t")?).ok().and_then(time_us).ok_or(Malformed::Value("t"))?,
        upstream_addr: text(fields.ua, "ua")?,
        upstream_status: text(fields.us, "us")?,
        upstream_time: text(fields.ut, "ut")?,
    })
}

fn text<'a>(v: Option<Value<'a>>, name: &'static str) -> Result<&'a str, Malformed> {
    match v {
        Some(Value::Str(raw)) => std::str::from_utf8(raw).map_err(|_| Malformed::Value(name)),
        Some(Value::Token(_)) => Err(Malformed::Value(name)),
        None => Ok(""),
    }
}

fn number<'a>(v: Option<Value<'a>>, name: &'static str) -> Result<&'a [u8], Malformed> {
    match v {
        Some(Value::Token(raw)) => Ok(raw),
        Some(Value::Str(_)) => Err(Malformed::Value(name)),
        None => Err(Malformed::Missing(name)),
    }
}

/// An unsigned decimal integer, `None` when empty, not digits or over `u64`.
fn integer(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// nginx's seconds with milliseconds (`0.004`, `12.000`) in microseconds; digits past the sixth
/// decimal are ignored. `None` for `-`, a sign, or a value over `u64` microseconds.
fn time_us(text: &str) -> Option<u64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let whole = if whole.is_empty() { 0 } else { integer(whole.as_bytes())? };
    let mut micros = 0u64;
    for i in 0..6 {
        let digit = match frac.as_bytes().get(i) {
            Some(b) if b.is_ascii_digit() => u64::from(b - b'0'),
            Some(_) => return None,
            None => 0,
        };
        micros = micros * 10 + digit;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.checked_mul(1_000_000)?.checked_add(micros)
}

#[derive(Default, Clone, Copy)]
struct Fields<'a> {
    d: Option<Value<'a>>,
    s: Option<Value<'a>>,
    b: Option<Value<'a>>,
    t: Option<Value<'a>>,
    ua: Option<Value<'a>>,
    us: Option<Value<'a>>,
    ut: Option<Value<'a>>,
    other: Option<Value<'a>>,
}

#[derive(Clone, Copy)]
enum Value<'a> {
    /// A string's raw body, escapes left as they are.
    Str(&'a [u8]),
    /// A number or literal (`true`, `null`), unchecked.
    Token(&'a [u8]),
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self.bytes.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.bytes.get(self.at) == Some(&byte);
        self.at += usize::from(hit);
        hit
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(Malformed::Syntax)
        }
    }

    /// A string's body (after `"`, up to the closing unescaped `"`).
    fn string(&mut self) -> Result<&'a [u8], Malformed> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            // The next quote or backslash, found a word at a time (request lines and times make
            // most of a line's bytes).
            let rest = self.bytes.get(self.at..).ok_or(Malformed::Syntax)?;
            self.at += memchr::memchr2(b'"', b'\\', rest).ok_or(Malformed::Syntax)?;
            match self.bytes[self.at] {
                b'"' => break,
                _ => self.at += 2,
            }
        }
        let body = self.bytes.get(start..self.at).ok_or(Malformed::Syntax)?;
        self.at += 1;
        Ok(body)
    }

    fn value(&mut self) -> Result<Value<'a>, Malformed> {
        if self.bytes.get(self.at) == Some(&b'"') {
            return self.string().map(Value::Str);
        }
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')) {
            self.at += 1;
        }
        if self.at == start {
            return Err(Malformed::Syntax);
        }
        Ok(Value::Token(&self.bytes[start..self.at]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINE: &str =
        r#"{"d":"app.example.com","s":200,"b":1234,"t":0.004,"ua":"10.0.0.1:80","us":"200","ut":"0.003"}"#;

    #[test]
    fn a_line_with_and_without_the_syslog_header() {
        let plain = parse(LINE.as_bytes()).unwrap();
        assert_eq!(plain.domain, "app.example.com");
        assert_eq!((plain.status, plain.bytes, plain.request_us), (200, 1234, 4000));
        assert_eq!(plain.upstream_us(), Some(3000));
        for header in ["<190>Dec  5 22:00:00 smartproxy: ", "<190>Dec 15 22:00:00 host smartproxy: "] {
            assert_eq!(parse(format!("{header}{LINE}").as_bytes()), Ok(plain));
        }
        assert_eq!(parse(format!("{LINE}\n").as_bytes()), Ok(plain));
    }

    #[test]
    fn the_format_is_one_nginx_string_that_yields_a_parsable_line() {
        let f = INSIGHT_LOG_FORMAT;
        assert!(f.starts_with('\'') && f.ends_with('\'') && !f[1..f.len() - 1].contains('\''), "{f}");
        for absent in ["$remote_addr", "$request\"", "$request_uri", "$host", "$http_"] {
            assert!(!f.contains(absent), "{absent}");
        }
        // What nginx writes: each variable replaced by a value (escape=json: unset is empty).
        let line = f[1..f.len() - 1]
            .replace("$server_name", "a.com")
            .replace("$status", "502")
            .replace("$bytes_sent", "0")
            .replace("$request_time", "1.500")
            .replace("$upstream_addr", "10.0.0.1:80, 10.0.0.2:80 : unix:/run/x.sock")
            .replace("$upstream_status", "502, 504 : -")
            .replace("$upstream_response_time", "0.001, 1.000 : -");
        let e = parse(line.as_bytes()).unwrap();
        assert_eq!((e.domain, e.status, e.request_us), ("a.com", 502, 1_500_000));
        let attempts: Vec<_> = e.attempts().collect();
        assert_eq!(
            attempts,
            vec![
                Attempt { addr: "10.0.0.1:80", status: Some(502), time_us: Some(1000), answered: false, last: false },
                Attempt {
                    addr: "10.0.0.2:80",
                    status: Some(504),
                    time_us: Some(1_000_000),
                    answered: true,
                    last: false
                },
                Attempt { addr: "unix:/run/x.sock", status: None, time_us: None, answered: true, last: true },
            ]
        );
        assert_eq!(attempts.iter().map(Attempt::failed).collect::<Vec<_>>(), [true, true, false]);
        assert_eq!(attempts.iter().filter(|a| a.timed_out()).count(), 1);
        assert_eq!(e.upstream_us(), None);
    }

    #[test]
    fn an_access_log_line_yields_the_same_entry_and_a_redirect_line_none() {
        let fill = |f: &str| {
            f[1..f.len() - 1]
                .replace("$time_iso8601", "2026-12-06T07:00:00+00:00")
                .replace("$remote_addr", "203.0.113.9")
                .replace("$request_time", "1.500")
                .replace("$request", r#"GET /a\"b\u0000?q HTTP/1.1"#)
                .replace("$status", "502")
                .replace("$bytes_sent", "0")
                .replace("$host", "evil.example")
                .replace("$upstream_addr", "10.0.0.1:80, 10.0.0.2:80")
                .replace("$upstream_status", "502, 504")
                .replace("$upstream_response_time", "0.001, 1.000")
        };
        for f in [ACCESS_LOG_FORMAT, REDIRECT_LOG_FORMAT] {
            assert!(f.starts_with('\'') && f.ends_with('\'') && !f[1..f.len() - 1].contains('\''), "{f}");
        }
        let line = fill(ACCESS_LOG_FORMAT);
        let e = parse_access(line.as_bytes()).unwrap().unwrap();
        assert_eq!((e.domain, e.status, e.request_us, e.upstream_us()), ("", 502, 1_500_000, Some(1_000_000)));
        assert_eq!(e.attempts().filter(Attempt::failed).count(), 2);
        // The same figures as the insight file's line.
        let short = fill(INSIGHT_LOG_FORMAT).replace("$server_name", "a.test");
        assert_eq!(parse(short.as_bytes()).unwrap(), Entry { domain: "a.test", ..e });
        assert_eq!(parse_access(fill(REDIRECT_LOG_FORMAT).as_bytes()), Ok(None));
        assert_eq!(parse_access(b"{\"status\":200}"), Ok(None));
        let long = line.replace("/a", &"/".repeat(MAX_ACCESS_LINE));
        assert_eq!(parse_access(long.as_bytes()), Err(Malformed::Oversized));
        assert_eq!(parse_access(line.replace("/a", &"/".repeat(MAX_LINE)).as_bytes()).map(|e| e.is_some()), Ok(true));
    }

    /// Datagrams nginx 1.22 sent with this format to a Unix socket (`nohostname,tag=smartproxy`):
    /// no upstream, a retry after a 502, a refused upstream.
    #[test]
    fn what_nginx_sends() {
        let datagrams: [&[u8]; 3] = [
            br#"<190>Dec  5 22:23:55 smartproxy: {"d":"app.example.com","s":204,"b":110,"t":0.000,"ua":"","us":"","ut":""}"#,
            br#"<190>Dec  5 22:23:55 smartproxy: {"d":"app.example.com","s":200,"b":150,"t":0.000,"ua":"127.0.0.1:18991, 127.0.0.1:18992","us":"502, 200","ut":"0.000, 0.000"}"#,
            br#"<190>Dec  5 22:23:55 smartproxy: {"d":"app.example.com","s":502,"b":314,"t":0.000,"ua":"127.0.0.1:18993","us":"502","ut":"0.000"}"#,
        ];
        let parsed: Vec<Entry<'_>> = datagrams.iter().map(|d| parse(d).unwrap()).collect();
        assert!(parsed.iter().all(|e| e.domain == "app.example.com" && e.request_us == 0));
        assert_eq!(parsed.iter().map(|e| e.status).collect::<Vec<_>>(), [204, 200, 502]);
        let failed = |e: &Entry<'_>| e.attempts().map(|a| (a.addr.to_string(), a.failed())).collect::<Vec<_>>();
        assert_eq!(failed(&parsed[0]), []);
        assert_eq!(failed(&parsed[1]), [("127.0.0.1:18991".into(), true), ("127.0.0.1:18992".into(), false)]);
        assert_eq!(failed(&parsed[2]), [("127.0.0.1:18993".into(), true)]);
    }

    #[test]
    fn upstream_lists() {
        let with = |ua: &str, us: &str, ut: &str| {
            let line = format!(r#"{{"d":"a","s":200,"b":1,"t":0.010,"ua":"{ua}","us":"{us}","ut":"{ut}"}}"#);
            let e = parse(line.as_bytes()).unwrap();
            (e.attempts().map(|a| (a.addr.to_string(), a.status, a.failed())).collect::<Vec<_>>(), e.upstream_us())
        };
        assert_eq!(with("-", "-", "-"), (vec![], None));
        assert_eq!(with("", "", ""), (vec![], None));
        assert_eq!(
            with("10.0.0.1:80, 10.0.0.2:80", "502, 200", "0.004, 0.001"),
            (vec![("10.0.0.1:80".into(), Some(502), true), ("10.0.0.2:80".into(), Some(200), false)], Some(1000))
        );
        assert_eq!(with("[::1]:8080", "200", "0.020"), (vec![("[::1]:8080".into(), Some(200), false)], Some(20_000)));
        // A list shorter than the addresses: the missing items are unknown.
        assert_eq!(
            with("a:1, b:2", "200", ""),
            (vec![("a:1".into(), Some(200), true), ("b:2".into(), None, false)], None)
        );
        // An internal redirect: the first group answered (404, then error_page), not a failure.
        assert_eq!(
            with("a:1 : b:2", "404 : 200", "0.001 : 0.002"),
            (vec![("a:1".into(), Some(404), false), ("b:2".into(), Some(200), false)], Some(2000))
        );
    }

    #[test]
    fn refused() {
        let cases: &[(&str, Malformed)] = &[
            ("", Malformed::Syntax),
            ("<190>no json", Malformed::Syntax),
            (r#"{"d":"a","s":200,"b":1}"#, Malformed::Missing("t")),
            (r#"{"s":200,"b":1,"t":0}"#, Malformed::Missing("d")),
            (r#"{"d":"a","s":-200,"b":1,"t":0}"#, Malformed::Value("s")),
            (r#"{"d":"a","s":700,"b":1,"t":0}"#, Malformed::Value("s")),
            (r#"{"d":"a","s":200,"b":99999999999999999999999,"t":0}"#, Malformed::Value("b")),
            (r#"{"d":"a","s":200,"b":1,"t":-0.1}"#, Malformed::Value("t")),
            (r#"{"d":"a","s":200,"b":1,"t":"0.1"}"#, Malformed::Value("t")),
            (r#"{"d":"a","s":200,"b":1,"t":0} x"#, Malformed::Syntax),
            (r#"{"d":"a\"}"#, Malformed::Syntax),
        ];
        for (line, why) in cases {
            assert_eq!(parse(line.as_bytes()), Err(*why), "{line}");
        }
        assert_eq!(parse(&vec![b' '; MAX_LINE + 1]), Err(Malformed::Oversized));
        let bad_utf8 = b"{\"d\":\"\xff\",\"s\":200,\"b\":1,\"t\":0}";
        assert_eq!(parse(bad_utf8), Err(Malformed::Value("d")));
        // Extra fields and an escaped quote in a string are fine.
        let e = parse(br#"{"x":[],"d":"a\"b","s":200,"b":1,"t":0,"z":null}"#);
        assert_eq!(e, Err(Malformed::Syntax), "arrays are not part of the format");
        let e = parse(br#"{"x":"y","d":"a\"b","s":200,"b":1,"t":0,"z":null}"#).unwrap();
        assert_eq!(e.domain, r#"a\"b"#);
    }

    fn valid_line() -> impl Strategy<Value = Vec<u8>> {
        (
            "[a-z0-9.-]{0,40}",
            100u16..600,
            any::<u64>(),
            0u32..200_000,
            proptest::collection::vec(("[0-9.:]{1,20}", prop_oneof![Just("-".to_string()), "[1-5][0-9]{2}"]), 0..4),
        )
            .prop_map(|(d, s, b, t, ups)| {
                let ua: Vec<&str> = ups.iter().map(|u| u.0.as_str()).collect();
                let us: Vec<&str> = ups.iter().map(|u| u.1.as_str()).collect();
                format!(
                    r#"<190>Dec  5 22:00:00 smartproxy: {{"d":"{d}","s":{s},"b":{b},"t":{}.{:03},"ua":"{}","us":"{}","ut":"{}"}}"#,
                    t / 1000,
                    t % 1000,
                    ua.join(", "),
                    us.join(" : "),
                    us.iter().map(|_| "0.001").collect::<Vec<_>>().join(", ")
                )
                .into_bytes()
            })
    }

    /// Lines of [`ACCESS_LOG_FORMAT`] and [`REDIRECT_LOG_FORMAT`] as nginx fills them
    /// (`escape=json`: quotes and backslashes escaped, control bytes as `\u00XX`), with request
    /// lines and hosts of any characters.
    fn access_line() -> impl Strategy<Value = Vec<u8>> {
        (valid_line(), "\\PC{0,60}|[\\x00-\\x1f\"\\\\ ]{0,8}", "\\PC{0,20}", any::<bool>()).prop_map(
            |(insight, request, host, redirect)| {
                let e = parse(&insight).unwrap();
                let escape = |v: &str| {
                    let mut out = String::new();
                    for c in v.chars() {
                        match c {
                            '"' | '\\' => out.extend(['\\', c]),
                            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                            c => out.push(c),
                        }
                    }
                    out
                };
                let mut f = if redirect { REDIRECT_LOG_FORMAT } else { ACCESS_LOG_FORMAT }.to_string();
                f = f[1..f.len() - 1].to_string();
                let t = format!("{}.{:03}", e.request_us / 1_000_000, e.request_us / 1000 % 1000);
                for (var, value) in [
                    ("$time_iso8601", "2026-12-05T22:00:00+00:00".to_string()),
                    ("$remote_addr", "203.0.113.7".to_string()),
                    ("$request_time", t),
                    ("$request", escape(&request)),
                    ("$status", e.status.to_string()),
                    ("$bytes_sent", e.bytes.to_string()),
                    ("$host", escape(&host)),
                    ("$upstream_addr", e.upstream_addr.to_string()),
                    ("$upstream_status", e.upstream_status.to_string()),
                    ("$upstream_response_time", e.upstream_time.to_string()),
                ] {
                    f = f.replace(var, &value);
                }
                f.into_bytes()
            },
        )
    }

    /// `line` with each edit made: (where, byte, 0 replace / 1 insert / 2 remove).
    fn mutated(mut line: Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
        for (at, byte, op) in edits {
            let i = at.index(line.len() + 1);
            match op {
                0 if i < line.len() => line[i] = byte,
                1 => line.insert(i, byte),
                _ if i < line.len() => {
                    line.remove(i);
                }
                _ => {}
            }
        }
        line
    }

    proptest! {
        #[test]
        fn lines_as_written_read_the_same_in_place(
            line in access_line(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
        ) {
            // Intact, the in-place reading takes the line; mutated, it takes it or leaves it to
            // the general reading, and where it takes it both agree.
            let fast = as_written(&line).map(access_entry);
            prop_assert!(fast.is_some(), "{}", String::from_utf8_lossy(&line));
            prop_assert_eq!(fast, fields(&line).ok().map(access_entry));
            let line = mutated(line, edits);
            if let Some(fast) = as_written(&line).map(access_entry) {
                prop_assert_eq!(Some(fast), fields(&line).ok().map(access_entry));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            if let Ok(e) = parse(&bytes) {
                let _ = e.attempts().count();
                let _ = e.upstream_us();
            }
            if let Ok(Some(e)) = parse_access(&bytes) {
                let _ = e.attempts().count();
            }
        }

        #[test]
        fn valid_lines_parse(line in valid_line()) {
            let e = parse(&line).unwrap();
            prop_assert!(e.attempts().count() <= 4);
        }

        #[test]
        fn mutated_lines_never_panic(
            line in valid_line(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let line = mutated(line, edits);
            if let Ok(e) = parse(&line) {
                for a in e.attempts() {
                    let _ = (a.failed(), a.timed_out());
                }
                let _ = e.upstream_us();
            }
        }
    }
}
