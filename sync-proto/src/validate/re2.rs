//! Envoy's limit on regular expressions: RE2 program size.
//!
//! Envoy compiles every `safe_regex` with Google RE2 and refuses one whose
//! compiled program has more than 100 instructions (runtime key
//! `re2.max_program_size.error_level`, default 100; Envoy
//! `source/common/common/regex.cc`, `CompiledGoogleReMatcher`). A route
//! carrying such a regex is NACKed, and with it every later change to that
//! route configuration. So the size is checked at apply time.
//!
//! We cannot run RE2 here, so [`program_size`] estimates it from the
//! `regex-syntax` HIR with the cost RE2's compiler gives each construct
//! after `Simplify` (counted repetitions are expanded) and `Flatten` (no
//! `Alt` instructions), calibrated against Envoy 1.40's own numbers (the
//! table in this module's tests; measured by lowering Envoy's warn level,
//! which logs each regex's program size). The estimate never falls below
//! RE2's on that table and is exact on most of it; where RE2 is cleverer
//! (Unicode classes, anchored literal prefixes, case folding) it errs high,
//! so what passes here passes in Envoy.
//!
//! ```text
//!   4                      fail + the unanchored `.*?` loop + match
//!   + 1 per literal byte   (UTF-8 bytes of non-ASCII characters)
//!   + 1 per byte range     of a class ([a-z0-9-] = 3); +1 for \s-like classes (RE2's \s has no \v)
//!   + 2 per capture group
//!   + 1 per look-around    (\b, ^ and $ inside the pattern)
//!   x* and x+ and x?       cost(x) + 1
//!   x{n,m}                 n·cost(x) + (m−n)·(cost(x) + 1);   x{n,} = n·cost(x) + 1
//!   a|b|…                  sum of max(cost(branch), 1)
//! ```

use regex_syntax::hir::{Class, Hir, HirKind};

/// Envoy's default `re2.max_program_size.error_level`.
pub const ENVOY_MAX_PROGRAM_SIZE: u64 = 100;

/// Fixed instructions of every program: the fail instruction, the
/// unanchored `.*?` prefix loop and the match instruction.
const BASE: u64 = 4;

/// Estimated RE2 program size of `pattern` (an upper bound of what Envoy
/// reports), or `None` when `regex-syntax` cannot parse it (the caller
/// reports the syntax error). Saturates instead of overflowing.
pub fn program_size(pattern: &str) -> Option<u64> {
    // Byte-oriented, ASCII-only Perl classes: RE2's `\d`, `\w`, `\s` and `.`
    // are ASCII or byte classes too.
    let bytes = regex_syntax::ParserBuilder::new().unicode(false).utf8(false).build().parse(pattern);
    match bytes {
        Ok(hir) => Some(BASE.saturating_add(cost(&hir))),
        // Non-ASCII classes or Unicode properties: count them in Unicode
        // mode, each range as its longest UTF-8 byte sequence (generous).
        Err(_) => {
            let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
            Some(BASE.saturating_add(cost(&hir)))
        }
    }
}

fn cost(h: &Hir) -> u64 {
    match h.kind() {
        HirKind::Empty => 0,
        HirKind::Literal(lit) => lit.0.len() as u64,
        HirKind::Class(Class::Bytes(c)) => {
            let r = c.ranges();
            // regex-syntax's ASCII `\s` is [\t-\r ], RE2's [\t\n\f\r ] (no \v):
            // RE2 needs one range more for `\s`-like classes (a range over
            // \t..\r) and for `\S`-like ones (a gap over \t..\r).
            let s_like = r.iter().any(|x| x.start() <= 0x0a && x.end() >= 0x0c);
            let not_s_like = r.windows(2).any(|w| w[0].end() == 0x08 && w[1].start() == 0x0e);
            r.len() as u64 + u64::from(s_like || not_s_like)
        }
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| {
                let near_vt = r.start() <= '\u{0b}' && r.end() >= '\u{0b}';
                r.end().len_utf8() as u64 + u64::from(near_vt)
            })
            .fold(0, u64::saturating_add),
        HirKind::Look(_) => 1,
        HirKind::Capture(c) => cost(&c.sub).saturating_add(2),
        HirKind::Concat(subs) => subs.iter().map(cost).fold(0, u64::saturating_add),
        HirKind::Alternation(subs) => subs.iter().map(|s| cost(s).max(1)).fold(0, u64::saturating_add),
        HirKind::Repetition(rep) => {
            let c = cost(&rep.sub);
            let n = u64::from(rep.min);
            match rep.max {
                // x*, x+, x{n,}: n copies (one of them looping) plus the loop.
                None => n.max(1).saturating_mul(c).saturating_add(1),
                // x{n,m}: n copies, then m-n nested optional ones.
                Some(m) => {
                    let optional = u64::from(m).saturating_sub(n);
                    n.saturating_mul(c).saturating_add(optional.saturating_mul(c.saturating_add(1)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(pattern, RE2 program size Envoy 1.40 reports)`, measured with
    /// `re2.max_program_size.warn_level: 0` in a static runtime layer and
    /// `envoy --mode validate -l warning`.
    const ENVOY_1_40: &[(&str, u64)] = &[
        ("a", 5),
        ("/a{10}", 15),
        ("/a{100}", 105),
        ("^/products/[a-z0-9-]{1,64}$", 259),
        ("ab", 6),
        ("abc", 7),
        ("^a", 4),
        ("a$", 5),
        ("^a$", 4),
        ("[a-z]", 5),
        ("[a-z0-9]", 6),
        ("[a-z0-9-]", 7),
        (".", 6),
        ("a*", 5),
        ("a+", 6),
        ("a?", 6),
        ("a|b", 5),
        ("ab|cd", 8),
        ("(a)", 7),
        ("(?:a)", 5),
        ("a{2,3}", 8),
        ("\\d", 5),
        ("\\w", 7),
        ("[^a]", 6),
        ("é", 6),
        ("(?i)a", 5),
        (".*", 6),
        ("^/api/.*", 6),
        ("x{1,64}", 131),
        ("[a-z]{1,64}", 131),
        ("[a-z]{2}", 6),
        ("[a-z0-9-]{1,64}", 259),
        ("^[a-z0-9-]{1,64}$", 257),
        ("[a-z0-9-]?", 8),
        ("[a-z0-9-]*", 7),
        ("[a-z0-9-]+", 8),
        ("éé", 8),
        ("[é-ü]", 5),
        ("ā", 6),
        ("[ā-ž]", 5),
        ("\\p{L}", 11),
        ("(?s).", 5),
        ("\\b", 5),
        ("a\\bb", 7),
        ("(a|b)*c", 8),
        ("(ab|cd)+", 11),
        ("(?i)abc", 7),
        ("(?i)[a-z]", 5),
        ("[[:alpha:]]", 5),
        ("\\S", 8),
        ("\\s", 7),
        ("[^/]+", 7),
        ("/v[0-9]+/.*", 11),
        ("(a+)+", 9),
        ("((a)?)?", 11),
        ("a{0,5}", 14),
        ("a{3,}", 8),
        ("(?:ab){3}", 10),
        ("(?:ab){0,3}", 13),
        (".{0,10}", 34),
        ("[^\\n]", 6),
        ("a.b", 8),
        ("(?P<n>x)", 7),
        ("^$", 2),
        ("x|", 6),
        ("(?:)", 4),
        ("/a{1,20}?", 44),
        ("^(?:/[a-z]{1,5}){1,3}$", 34),
    ];

    #[test]
    fn never_below_envoy_and_close_on_ascii() {
        for &(pattern, envoy) in ENVOY_1_40 {
            let ours = program_size(pattern).unwrap_or_else(|| panic!("{pattern:?} does not parse"));
            assert!(ours >= envoy, "{pattern:?}: estimate {ours} is below Envoy's {envoy}");
            // Close, except where RE2 strips an anchored literal prefix
            // (`^/api/` is matched outside the program) or Unicode classes.
            if pattern.is_ascii() && !pattern.contains("\\p") && !pattern.starts_with("^/") {
                assert!(ours <= envoy + envoy / 10 + 4, "{pattern:?}: estimate {ours} is far above Envoy's {envoy}");
            }
        }
    }

    #[test]
    fn the_reported_regexes_are_over_the_limit() {
        for p in ["^/products/[a-z0-9-]{1,64}$", "/a{100}"] {
            assert!(program_size(p).is_some_and(|s| s > ENVOY_MAX_PROGRAM_SIZE), "{p}");
        }
        for p in ["^/products/[a-z0-9-]+$", "/a{90}", "^/api/v[0-9]+/.*$"] {
            assert!(program_size(p).is_some_and(|s| s <= ENVOY_MAX_PROGRAM_SIZE), "{p}");
        }
    }

    #[test]
    fn nested_repetitions_saturate() {
        let size = program_size("((((((a{1000}){1000}){1000}){1000}){1000}){1000}){1000}");
        assert_eq!(size, Some(u64::MAX));
    }
}
