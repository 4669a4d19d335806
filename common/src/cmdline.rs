//! The kernel command line, tokenized the way the kernel does it.
//!
//! `/proc/cmdline` keeps the quotes the boot loader passed, so a value with
//! spaces arrives as `bootvault.pc="lab pc 3"` (or `"bootvault.pc=lab pc 3"`,
//! which the kernel also accepts). A word is a run of bare and quoted pieces;
//! quotes are removed and the pieces joined, then the word splits at its
//! first `=`. An unterminated quote runs to the end of the line, as in the
//! kernel's `next_arg()`.

use nom::branch::alt;
use nom::bytes::complete::{take_till, take_till1};
use nom::character::complete::{char, multispace0, multispace1};
use nom::combinator::{eof, opt};
use nom::multi::{many1, separated_list0};
use nom::sequence::{delimited, terminated};
use nom::{IResult, Parser};

/// One `key` or `key=value` parameter of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

fn quoted(input: &str) -> IResult<&str, &str> {
    delimited(char('"'), take_till(|c| c == '"'), opt(char('"'))).parse(input)
}

fn bare(input: &str) -> IResult<&str, &str> {
    take_till1(|c: char| c.is_whitespace() || c == '"').parse(input)
}

fn word(input: &str) -> IResult<&str, String> {
    many1(alt((quoted, bare))).map(|pieces: Vec<&str>| pieces.concat()).parse(input)
}

fn line(input: &str) -> IResult<&str, Vec<String>> {
    delimited(multispace0, separated_list0(multispace1, word), terminated(multispace0, eof)).parse(input)
}

/// Splits a kernel command line into parameters. Never fails: anything the
/// grammar cannot take (which is only possible with stray whitespace at odd
/// places) falls back to plain whitespace splitting.
pub fn parse(cmdline: &str) -> Vec<Param> {
    let words = match line(cmdline) {
        Ok((_, words)) => words,
        Err(_) => cmdline.split_whitespace().map(str::to_owned).collect(),
    };
    words
        .into_iter()
        .filter(|w| !w.is_empty())
        .map(|w| match w.split_once('=') {
            Some((k, v)) => Param { key: k.to_owned(), value: Some(v.to_owned()) },
            None => Param { key: w, value: None },
        })
        .collect()
}

/// Quotes a value for the command line when it needs it. Values holding a
/// double quote cannot be expressed on a kernel command line at all.
pub fn quote(value: &str) -> Option<String> {
    if value.contains('"') {
        None
    } else if value.is_empty() || value.chars().any(char::is_whitespace) {
        Some(format!("\"{value}\""))
    } else {
        Some(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: Option<&str>) -> Param {
        Param { key: k.into(), value: v.map(Into::into) }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Vec<Param>)] = &[
            ("", vec![]),
            ("   \n", vec![]),
            ("quiet", vec![kv("quiet", None)]),
            ("console=ttyS0 quiet\n", vec![kv("console", Some("ttyS0")), kv("quiet", None)]),
            (r#"bootvault.pc="lab pc 3" ro"#, vec![kv("bootvault.pc", Some("lab pc 3")), kv("ro", None)]),
            (r#""bootvault.pc=lab pc 3" ro"#, vec![kv("bootvault.pc", Some("lab pc 3")), kv("ro", None)]),
            ("a=b=c", vec![kv("a", Some("b=c"))]),
            ("a=", vec![kv("a", Some(""))]),
            (r#"a="""#, vec![kv("a", Some(""))]),
            (r#"a="unterminated x y"#, vec![kv("a", Some("unterminated x y"))]),
            ("  a\t\tb  ", vec![kv("a", None), kv("b", None)]),
            ("-- x=1", vec![kv("--", None), kv("x", Some("1"))]),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn quote_round_trips() {
        for v in ["plain", "with space", "", "tab\there"] {
            let q = quote(v).expect("quotable");
            let line = format!("k={q} next");
            assert_eq!(parse(&line)[0].value.as_deref(), Some(v));
        }
        assert_eq!(quote("a\"b"), None);
    }

    #[test]
    fn never_panics_on_noise() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut s = String::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let alphabet = b" \t\n\"=ab.\x01";
                s.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse(&s);
        }
    }
}
