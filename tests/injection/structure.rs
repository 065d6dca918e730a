//! An nginx lexer (ngx_conf_read_token's rules) and the structural comparison of a config with its benign twin's.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    /// A bare or quoted argument; `quote` is the quote character, if any. Escapes kept raw.
    Word {
        text: String,
        quote: Option<char>,
    },
    Semi,
    Open,
    Close,
    Comment(String),
}

pub(super) fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits a config as nginx does: blanks separate words; `;`, `{` and `}` at a token start are
/// structure; `#` at a token start runs to the end of the line; `"..."`/`'...'` with backslash
/// escapes; inside a bare word only blanks, `;` and `{` end it (`${` belongs to the word).
pub(super) fn tokenize(cfg: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = cfg.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let c = chars[i];
        match c {
            c if is_blank(c) => i += 1,
            ';' => {
                out.push(Tok::Semi);
                i += 1;
            }
            '{' => {
                out.push(Tok::Open);
                i += 1;
            }
            '}' => {
                out.push(Tok::Close);
                i += 1;
            }
            '#' => {
                let start = i + 1;
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
                out.push(Tok::Comment(chars[start..i].iter().collect()));
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&ch) = chars.get(i) else { return Err(format!("unterminated {quote} string: {text:?}")) };
                    if ch == '\\' {
                        text.push(ch);
                        text.extend(chars.get(i + 1));
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if ch == quote {
                        break;
                    }
                    text.push(ch);
                }
                if let Some(&next) = chars.get(i) {
                    if !(is_blank(next) || next == ';' || next == '{' || next == ')') {
                        return Err(format!("unexpected {next:?} after the quoted string {text:?}"));
                    }
                }
                out.push(Tok::Word { text, quote: Some(quote) });
            }
            _ => {
                let mut text = String::new();
                let mut variable = false;
                while i < n {
                    let ch = chars[i];
                    if ch == '{' && variable {
                        text.push(ch);
                        i += 1;
                        variable = false;
                        continue;
                    }
                    variable = false;
                    if ch == '\\' {
                        text.push(ch);
                        text.extend(chars.get(i + 1));
                        i += 2;
                        continue;
                    }
                    if is_blank(ch) || ch == ';' || ch == '{' {
                        break;
                    }
                    variable = ch == '$';
                    text.push(ch);
                    i += 1;
                }
                out.push(Tok::Word { text, quote: None });
            }
        }
    }
    Ok(out)
}

/// The statement skeleton: `name/argc;`, `name/argc{` and `}` per statement, checking the
/// block structure as nginx does (no empty statement, no `}` inside a statement, balanced).
pub(super) fn skeleton(tokens: &[Tok]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    let mut depth = 0usize;
    for t in tokens {
        match t {
            Tok::Comment(_) => {}
            Tok::Word { text, .. } => words.push(text),
            Tok::Semi | Tok::Open => {
                let Some(name) = words.first() else { return Err(format!("unexpected {t:?} with no directive")) };
                let end = if *t == Tok::Semi { ";" } else { "{" };
                out.push(format!("{name}/{}{end}", words.len() - 1));
                if *t == Tok::Open {
                    depth += 1;
                }
                words.clear();
            }
            Tok::Close => {
                if !words.is_empty() {
                    return Err(format!("unexpected '}}' after {words:?}"));
                }
                depth = depth.checked_sub(1).ok_or("unbalanced '}'")?;
                out.push("}".into());
            }
        }
    }
    if !words.is_empty() || depth != 0 {
        return Err(format!("unexpected end of file (depth {depth}, pending {words:?})"));
    }
    Ok(out)
}

/// Where a benign twin value sits in the twin config, and what may stand there in the config
/// under test: benign form → accepted forms.
#[derive(Debug, Default)]
pub(super) struct Subs(BTreeMap<String, BTreeSet<String>>);

impl Subs {
    pub(super) fn add(&mut self, benign: impl Into<String>, accepted: impl Into<String>) {
        self.0.entry(benign.into()).or_default().insert(accepted.into());
    }

    /// True when `hostile` is `benign` with every twin value replaced by one of its accepted
    /// forms (leftmost, then longest twin value first), and nothing else changed.
    pub(super) fn matches(&self, benign: &str, hostile: &str) -> bool {
        let mut best: Option<(usize, &String, &BTreeSet<String>)> = None;
        for (form, accepted) in &self.0 {
            if let Some(p) = benign.find(form.as_str()) {
                if best.is_none_or(|(bp, bf, _)| p < bp || (p == bp && form.len() > bf.len())) {
                    best = Some((p, form, accepted));
                }
            }
        }
        let Some((p, form, accepted)) = best else { return benign == hostile };
        if hostile.get(..p) != Some(&benign[..p]) {
            return false;
        }
        accepted.iter().any(|a| {
            hostile[p..].starts_with(a.as_str()) && self.matches(&benign[p + form.len()..], &hostile[p + a.len()..])
        })
    }
}

/// Characters a validated value may bring into the config.
pub(super) fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/[]*~-".contains(c)
}

/// Characters whose count must not change between the config under test and its twin.
pub(super) const STRUCTURAL: &[char] = &[
    ';', '{', '}', '"', '\'', '`', '$', '#', '\\', '\n', '\r', '\t', '\0', ' ', '\u{b}', '\u{c}', '=', '^', '(', ')',
    '|', ',',
];

/// How often each character occurs in `text`.
pub(super) fn histogram(text: &str) -> BTreeMap<char, usize> {
    let mut ascii = [0usize; 128];
    let mut other = BTreeMap::new();
    for c in text.chars() {
        match ascii.get_mut(c as usize) {
            Some(n) => *n += 1,
            None => *other.entry(c).or_insert(0) += 1,
        }
    }
    other.extend(ascii.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, n)| (c as u8 as char, *n)));
    other
}

/// The structural comparison (see the module documentation); panics with both configs.
pub(super) fn assert_same_structure(cfg: &str, twin_cfg: &str, subs: &Subs, inputs: &[&str]) {
    if let Err(what) = compare_structure(cfg, twin_cfg, subs, inputs) {
        let inputs: Vec<Hostile> = inputs.iter().map(|i| Hostile(i.to_string())).collect();
        panic!("{what}\n--- inputs ---\n{inputs:?}\n--- config under test ---\n{cfg}\n--- benign twin ---\n{twin_cfg}");
    }
}

pub(super) fn compare_structure(cfg: &str, twin_cfg: &str, subs: &Subs, inputs: &[&str]) -> Result<(), String> {
    let fail = |what: String| -> Result<(), String> { Err(what) };
    let toks = tokenize(cfg).map_err(|e| format!("the config does not tokenize: {e}"))?;
    let twin_toks = tokenize(twin_cfg).map_err(|e| format!("the twin config does not tokenize: {e}"))?;
    let shape = skeleton(&toks).map_err(|e| format!("the config is not well formed: {e}"))?;
    let twin_shape = skeleton(&twin_toks).map_err(|e| format!("the twin is not well formed: {e}"))?;
    if shape != twin_shape {
        let at = shape.iter().zip(&twin_shape).position(|(a, b)| a != b).unwrap_or(shape.len().min(twin_shape.len()));
        return fail(format!(
            "statement skeletons differ at statement {at}: {:?} vs twin {:?}",
            shape.get(at.saturating_sub(2)..(at + 3).min(shape.len())),
            twin_shape.get(at.saturating_sub(2)..(at + 3).min(twin_shape.len()))
        ));
    }
    if toks.len() != twin_toks.len() {
        return fail(format!("{} tokens vs {} in the twin", toks.len(), twin_toks.len()));
    }
    let mut statement_start = true;
    let mut directive = String::new();
    for (i, (t, b)) in toks.iter().zip(&twin_toks).enumerate() {
        match (t, b) {
            (Tok::Word { text: h, quote: hq }, Tok::Word { text: w, quote: wq }) => {
                if hq != wq {
                    return fail(format!("token {i}: quoting differs: {t:?} vs twin {b:?}"));
                }
                if statement_start {
                    // Directive names come from the template alone.
                    if h != w {
                        return fail(format!("token {i}: directive {h:?} vs twin {w:?}"));
                    }
                    directive = h.to_string();
                } else if !subs.matches(w, h) {
                    // server_names_hash_bucket_size follows the longest name's length.
                    let hash_size = directive.starts_with("server_names_hash_")
                        && h.chars().all(|c| c.is_ascii_digit())
                        && w.chars().all(|c| c.is_ascii_digit());
                    if !hash_size {
                        return fail(format!(
                            "token {i} of `{directive}`: {h:?} is not the twin's {w:?} with accepted values in place"
                        ));
                    }
                }
                statement_start = false;
            }
            (Tok::Comment(h), Tok::Comment(w)) => {
                if !subs.matches(w, h) {
                    return fail(format!("token {i}: comment {h:?} vs twin {w:?}"));
                }
            }
            (t, b) if t == b => {
                statement_start = true;
            }
            _ => return fail(format!("token {i}: {t:?} vs twin {b:?}")),
        }
    }
    let (counts, twin_counts) = (histogram(cfg), histogram(twin_cfg));
    let count = |h: &BTreeMap<char, usize>, c: char| h.get(&c).copied().unwrap_or(0);
    for &c in STRUCTURAL {
        let (n, m) = (count(&counts, c), count(&twin_counts, c));
        if n != m {
            return fail(format!("{c:?} occurs {n} times, {m} times in the twin"));
        }
    }
    if let Some(c) = counts.keys().find(|c| !twin_counts.contains_key(c) && !value_char(**c)) {
        return fail(format!("the config holds {c:?}, which neither the twin nor any validated value has"));
    }
    for input in inputs {
        for c in input.chars().filter(|c| !value_char(*c)).collect::<BTreeSet<_>>() {
            let (n, m) = (count(&counts, c), count(&twin_counts, c));
            if n != m {
                return fail(format!("input character {c:?} occurs {n} times in the config, {m} times in the twin"));
            }
        }
    }
    Ok(())
}

/// The lexer and the comparison catch what they are meant to catch.
#[test]
fn the_structural_check_detects_injection() {
    let toks = tokenize("a b;c \"d;e\" {f '}';}\n# x;y\ng h${x}i;").unwrap();
    assert_eq!(skeleton(&toks).unwrap(), ["a/1;", "c/1{", "f/1;", "}", "g/1;"]);
    assert!(tokenize("a \"b").is_err());
    assert!(skeleton(&tokenize("a {").unwrap()).is_err());
    assert!(tokenize("a \"b\"c;").is_err());
    let mut subs = Subs::default();
    subs.add("twin0000d.example", "a.com");
    subs.add("sp_twin0000u", "sp_app");
    assert!(subs.matches("/live/twin0000d.example/x.pem", "/live/a.com/x.pem"));
    assert!(subs.matches("http://sp_twin0000u", "http://sp_app"));
    assert!(!subs.matches("twin0000d.example", "a.com;"));
    assert!(!subs.matches("twin0000d.example", "b.com"));
    let benign = "server_name twin0000d.example;\n";
    for injected in
        ["server_name a.com;include x;\n", "server_name a.com x;\n", "server_name a.com\n;\n", "server_name a.com#;\n"]
    {
        assert!(
            compare_structure(injected, benign, &subs, &["a.com"]).is_err(),
            "{injected:?} passed the structural check"
        );
    }
    assert_same_structure("server_name a.com;\n", benign, &subs, &["a.com"]);
}
