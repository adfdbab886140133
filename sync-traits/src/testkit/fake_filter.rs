//! The small part of PocketBase's filter syntax that [`super::FakeRemote`]
//! evaluates, for partial-sync tests.
//!
//! Supported: comparisons `field OP value` with `OP` one of `=`, `!=`, `>`, `>=`,
//! `<`, `<=`, `~` (the field's text contains the value's, case-insensitively, as
//! PocketBase's `~` does for a plain string), combined with `&&`, `||` (`&&`
//! binds tighter) and parentheses. A value is a quoted string (`'..'` or `".."`,
//! backslash escapes), a number, `true`, `false`, `null`, `''`, or
//! `@request.auth.id` (the caller's user id; `""` for a superuser). A missing
//! field compares as `null`, and `null` equals `''`, `0` and `false` as in
//! PocketBase's "zero value" comparison. Anything else is refused (the fake
//! answers [`crate::RemoteError::Permanent`], as PocketBase answers 400).

use serde_json::Value;

use crate::record::Fields;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Value),
    Auth,
    Op(&'static str),
    And,
    Or,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = b[i..(i + 2).min(b.len())].iter().collect();
        match two.as_str() {
            "&&" => {
                out.push(Tok::And);
                i += 2;
                continue;
            }
            "||" => {
                out.push(Tok::Or);
                i += 2;
                continue;
            }
            "!=" | ">=" | "<=" => {
                out.push(Tok::Op(match two.as_str() {
                    "!=" => "!=",
                    ">=" => ">=",
                    _ => "<=",
                }));
                i += 2;
                continue;
            }
            _ => {}
        }
        match c {
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '=' => out.push(Tok::Op("=")),
            '>' => out.push(Tok::Op(">")),
            '<' => out.push(Tok::Op("<")),
            '~' => out.push(Tok::Op("~")),
            '\'' | '"' => {
                let mut lit = String::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err("unclosed string".into()),
                        Some('\\') => {
                            if let Some(n) = b.get(i + 1) {
                                lit.push(*n);
                            }
                            i += 2;
                        }
                        Some(q) if *q == c => break,
                        Some(ch) => {
                            lit.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Lit(Value::String(lit)));
            }
            _ if c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '-' || c == '.' => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], '_' | '@' | '-' | '.'))
                {
                    i += 1;
                }
                let w: String = b[start..i].iter().collect();
                out.push(match w.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "null" => Tok::Lit(Value::Null),
                    "@request.auth.id" => Tok::Auth,
                    _ if w.starts_with('@') => return Err(format!("unsupported {w}")),
                    _ => match w.parse::<f64>() {
                        Ok(n) => Tok::Lit(serde_json::json!(n)),
                        Err(_) => Tok::Ident(w),
                    },
                });
                continue;
            }
            _ => return Err(format!("unexpected {c:?}")),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    fields: &'a Fields,
    user: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut v = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.at += 1;
            let r = self.and()?;
            v = v || r;
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut v = self.term()?;
        while self.peek() == Some(&Tok::And) {
            self.at += 1;
            let r = self.term()?;
            v = v && r;
        }
        Ok(v)
    }

    fn operand(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Ident(f)) => Ok(self.fields.get(&f).cloned().unwrap_or(Value::Null)),
            Some(Tok::Lit(v)) => Ok(v),
            Some(Tok::Auth) => Ok(Value::String(self.user.to_owned())),
            t => Err(format!("expected a field or a value, got {t:?}")),
        }
    }

    fn term(&mut self) -> Result<bool, String> {
        if self.peek() == Some(&Tok::Open) {
            self.at += 1;
            let v = self.or()?;
            if self.next() != Some(Tok::Close) {
                return Err("expected )".into());
            }
            return Ok(v);
        }
        let a = self.operand()?;
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            t => return Err(format!("expected an operator, got {t:?}")),
        };
        let b = self.operand()?;
        Ok(compare(&a, op, &b))
    }
}

fn zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn compare(a: &Value, op: &str, b: &Value) -> bool {
    let eq = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ if zero(a) && zero(b) => true,
        _ => a == b,
    };
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match op {
        "=" => eq,
        "!=" => !eq,
        ">" => ord == Some(Greater),
        ">=" => matches!(ord, Some(Greater | Equal)),
        "<" => ord == Some(Less),
        "<=" => matches!(ord, Some(Less | Equal)),
        "~" => match (a, b) {
            (Value::String(x), Value::String(y)) => x.to_lowercase().contains(&y.to_lowercase()),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `fields` match `filter` for a caller whose user id is `user` (`""`: a
/// superuser); an error for syntax outside the subset.
pub(crate) fn matches(filter: &str, fields: &Fields, user: &str) -> Result<bool, String> {
    let mut p = Parser {
        toks: lex(filter)?,
        at: 0,
        fields,
        user,
    };
    let v = p.or()?;
    if p.at != p.toks.len() {
        return Err(format!("unexpected {:?}", p.peek()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Fields {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_subset_evaluates_like_pocketbase() {
        let r = f(serde_json::json!({"n": 5, "t": "Hello", "b": true, "o": "u1"}));
        for (expr, want) in [
            ("n = 5", true),
            ("n > 4 && n < 6", true),
            ("n >= 6 || t = 'Hello'", true),
            ("n >= 6 || (t = 'x' && b = true)", false),
            ("t ~ 'ell'", true),
            ("missing = ''", true),
            ("missing = null && n != 0", true),
            ("o = @request.auth.id", true),
            ("t = \"He\\\"llo\"", false),
        ] {
            assert_eq!(matches(expr, &r, "u1"), Ok(want), "{expr}");
        }
        assert_eq!(matches("o = @request.auth.id", &r, "u2"), Ok(false));
        for bad in ["n =", "n 5", "(n = 5", "n = 5)", "n = @now", "n ? 5"] {
            assert!(matches(bad, &r, "").is_err(), "{bad}");
        }
    }
}
