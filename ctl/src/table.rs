//! Plain-text tables (as `kumactl get` prints them) and the time helpers
//! their AGE columns need.

use std::collections::BTreeMap;

use serde_json::Value;

/// Columns left-aligned, separated by three spaces; a header row in capitals.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The label the incumbent puts the user's own name in when the stored name
/// differs (zone resources at the global: `<name>-<hash>` or `<zone>.<name>`).
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";
/// The label naming the zone a resource came from.
pub const ZONE_LABEL: &str = "kuma.io/zone";

/// A label of a resource (or of an `_overview` item, which carries its
/// resource's labels), or `""`.
pub fn label<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get("labels").and_then(|l| l.get(key)).and_then(Value::as_str).unwrap_or_default()
}

/// [`render`], with the origin of zone resources beside NAME, as the
/// incumbent's users find it at the global: a `DISPLAY NAME` column (the
/// `kuma.io/display-name` label, `-` when the stored name is the user's)
/// when any item's display name differs from its stored name, and a `ZONE`
/// column (`kuma.io/zone`) when any item came from a zone. Stored names stay
/// in NAME, since the API addresses resources by them. `items` and `rows`
/// are parallel; without a NAME header the table is rendered as is.
pub fn render_named(headers: &[&str], mut rows: Vec<Vec<String>>, items: &[Value]) -> String {
    let Some(at) = headers.iter().position(|h| *h == "NAME") else {
        return render(headers, &rows);
    };
    let display = |v: &Value| {
        let d = label(v, DISPLAY_NAME_LABEL);
        if d.is_empty() || d == str_field(v, "name") { "-".to_string() } else { d.to_string() }
    };
    let show_display = items.iter().any(|v| display(v) != "-");
    let show_zone = items.iter().any(|v| !label(v, ZONE_LABEL).is_empty());
    let mut headers: Vec<&str> = headers.to_vec();
    let mut insert = at + 1;
    if show_display {
        headers.insert(insert, "DISPLAY NAME");
        for (row, v) in rows.iter_mut().zip(items) {
            row.insert(insert.min(row.len()), display(v));
        }
        insert += 1;
    }
    if show_zone {
        headers.insert(insert, "ZONE");
        for (row, v) in rows.iter_mut().zip(items) {
            let z = label(v, ZONE_LABEL);
            row.insert(insert.min(row.len()), if z.is_empty() { "-".into() } else { z.into() });
        }
    }
    render(&headers, &rows)
}

/// A string field of a JSON object, or `""`.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The value at a JSON pointer as an integer (numbers or the decimal strings
/// proto3 JSON uses for 64-bit integers), 0 when absent.
pub fn u64_at(v: &Value, pointer: &str) -> u64 {
    match v.pointer(pointer) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// `k1=v1,k2=v2` (sorted by key) of a string map, or `-` when empty.
pub fn tags(v: Option<&Value>) -> String {
    let map: BTreeMap<&str, &str> = v
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    if map.is_empty() {
        return "-".into();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// How long ago an RFC 3339 time was, as `kubectl` shows ages (`42s`, `5m`,
/// `3h`, `12d`); `-` when absent or unreadable.
pub fn age(rfc3339: Option<&str>, now_millis: i64) -> String {
    match rfc3339.and_then(parse_rfc3339_millis) {
        Some(t) => duration((now_millis - t).max(0) / 1000),
        None => "-".into(),
    }
}

/// Seconds as `42s`, `5m`, `3h`, `12d`.
pub fn duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into unix milliseconds.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let s = s.trim();
    let num = |a: usize, b: usize| -> Option<i64> {
        let part = s.get(a..b)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let sep = |i: usize, c: &[u8]| s.as_bytes().get(i).is_some_and(|b| c.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        millis = ms.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (oh, om) = rest.get(1..)?.split_once(':')?;
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec - offset_secs) * 1000) + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_columns_only_when_some_item_has_them() {
        let local = serde_json::json!({"name": "edge"});
        let synced = serde_json::json!({"name": "edge-1-bcdd994zxbvwfv24",
            "labels": {"kuma.io/display-name": "edge-1", "kuma.io/zone": "zone-1", "kuma.io/origin": "zone"}});
        let row = |n: &str| vec![n.to_string(), "1s".to_string()];
        assert_eq!(
            render_named(&["NAME", "AGE"], vec![row("edge")], std::slice::from_ref(&local)),
            "NAME   AGE\nedge   1s\n"
        );
        assert_eq!(
            render_named(&["NAME", "AGE"], vec![row("edge"), row("edge-1-bcdd994zxbvwfv24")], &[local, synced]),
            "NAME                      DISPLAY NAME   ZONE     AGE\n\
             edge                      -              -        1s\n\
             edge-1-bcdd994zxbvwfv24   edge-1         zone-1   1s\n"
        );
        let same = serde_json::json!({"name": "ingress-1", "labels": {"kuma.io/display-name": "ingress-1", "kuma.io/zone": "z"}});
        assert_eq!(
            render_named(&["NAME", "AGE"], vec![row("ingress-1")], &[same]),
            "NAME        ZONE   AGE\ningress-1   z      1s\n",
            "no DISPLAY NAME column when every display name is the stored name"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_millis("2026-11-18T11:06:40.123Z"), Some(1_795_000_000_123));
        assert_eq!(parse_rfc3339_millis("2000-02-29T00:00:00.000Z"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339_millis("2000-02-29T01:00:00.5+01:00"), Some(951_782_400_500));
        assert_eq!(parse_rfc3339_millis("2026-11-18T11:06:40.123456789Z"), Some(1_795_000_000_123));
        assert_eq!(parse_rfc3339_millis("yesterday"), None);
        assert_eq!(parse_rfc3339_millis("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn ages() {
        assert_eq!(age(Some("1970-01-01T00:00:00Z"), 42_000), "42s");
        assert_eq!(age(Some("1970-01-01T00:00:00Z"), 600_000), "10m");
        assert_eq!(age(Some("1970-01-01T00:00:00Z"), 3 * 86_400_000), "3d");
        assert_eq!(age(None, 0), "-");
    }

    #[test]
    fn tables_align() {
        let t = render(&["MESH", "NAME", "AGE"], &[vec!["default".into(), "gw".into(), "1m".into()]]);
        assert_eq!(t, "MESH      NAME   AGE\ndefault   gw     1m\n");
        let t = render(&["NAME"], &[]);
        assert_eq!(t, "NAME\n");
    }

    #[test]
    fn tag_lists() {
        let v = serde_json::json!({"b": "2", "a": "1"});
        assert_eq!(tags(Some(&v)), "a=1,b=2");
        assert_eq!(tags(None), "-");
    }
}
