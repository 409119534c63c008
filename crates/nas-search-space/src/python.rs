//! The official Python notation of DARTS genotypes, as the reference code prints them:
//! `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=range(2, 6))`
//! and `Genotype(recurrent=[('sigmoid', 0), ...], concat=range(1, 9))`.
//!
//! The reader accepts what a person pastes from `genotypes.py`: an optional `NAME =`
//! prefix, a dotted `genotypes.Genotype`, keyword or positional fields, single or double
//! quotes, `range(a, b)`, `range(b)`, `list(range(...))` or lists, trailing commas,
//! newlines and `#` comments.

use crate::cnn::{CnnCell, CnnEdge, CnnGenotype, DEFAULT_INPUTS_PER_NODE};
use crate::concat::Concat;
use crate::error::{Error, Result};
use crate::genotype::Genotype;
use crate::primitive::{CnnOp, RnnOp};
use crate::rnn::{RnnEdge, RnnGenotype};

const FORMAT: &str = "python notation";

/// Parses a DARTS CNN or RNN genotype written in Python notation.
pub fn parse(text: &str) -> Result<Genotype> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
    };
    // Optional `NAME =` (or `module.NAME =`) prefix.
    if parser
        .tokens
        .iter()
        .position(|t| t.kind == Tok::Eq)
        .is_some_and(|eq| {
            parser.tokens[..eq]
                .iter()
                .all(|t| matches!(t.kind, Tok::Ident(_) | Tok::Dot))
                && eq > 0
        })
    {
        while parser.peek().kind != Tok::Eq {
            parser.pos += 1;
        }
        parser.pos += 1;
    }
    let value = parser.value()?;
    let end = parser.peek();
    if end.kind != Tok::End {
        return Err(end.error(format!(
            "unexpected {} after the genotype",
            end.kind.describe()
        )));
    }
    interpret(value)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(usize),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Eq,
    Dot,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("name `{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("integer {i}"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Dot => "`.`".into(),
            Tok::End => "end of input".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    line: usize,
    column: usize,
}

impl Token {
    fn error(&self, message: String) -> Error {
        Error::Syntax {
            format: FORMAT,
            line: self.line,
            column: self.column,
            message,
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut column) = (1, 1);
    let err = |line, column, message: String| Error::Syntax {
        format: FORMAT,
        line,
        column,
        message,
    };
    while let Some(&c) = chars.peek() {
        let (start_line, start_column) = (line, column);
        let mut bump = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let c = chars.next();
            if c == Some('\n') {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
            c
        };
        let kind = match c {
            c if c.is_whitespace() => {
                bump(&mut chars);
                continue;
            }
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    bump(&mut chars);
                }
                continue;
            }
            '(' | ')' | '[' | ']' | ',' | '=' | '.' => {
                bump(&mut chars);
                match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    ',' => Tok::Comma,
                    '=' => Tok::Eq,
                    _ => Tok::Dot,
                }
            }
            '\'' | '"' => {
                bump(&mut chars);
                let mut s = String::new();
                loop {
                    match bump(&mut chars) {
                        Some(q) if q == c => break,
                        Some('\n') | None => {
                            return Err(err(start_line, start_column, "unterminated string".into()))
                        }
                        Some(ch) => s.push(ch),
                    }
                }
                Tok::Str(s)
            }
            c if c.is_ascii_digit() => {
                let mut s = String::new();
                while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                    s.extend(bump(&mut chars));
                }
                let value = s.parse::<usize>().map_err(|_| {
                    err(
                        start_line,
                        start_column,
                        format!("integer {s} is too large"),
                    )
                })?;
                Tok::Int(value)
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while chars
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    s.extend(bump(&mut chars));
                }
                Tok::Ident(s)
            }
            other => {
                return Err(err(
                    start_line,
                    start_column,
                    format!("unexpected character {other:?}"),
                ))
            }
        };
        tokens.push(Token {
            kind,
            line: start_line,
            column: start_column,
        });
    }
    tokens.push(Token {
        kind: Tok::End,
        line,
        column,
    });
    Ok(tokens)
}

/// A parsed Python value, with the token where it starts (for error messages).
#[derive(Debug)]
enum Value {
    Call {
        name: String,
        args: Vec<(Option<String>, Value)>,
        at: Token,
    },
    List(Vec<Value>, Token),
    Tuple(Vec<Value>, Token),
    Str(String, Token),
    Int(usize, Token),
}

impl Value {
    fn at(&self) -> &Token {
        match self {
            Value::Call { at, .. }
            | Value::List(_, at)
            | Value::Tuple(_, at)
            | Value::Str(_, at)
            | Value::Int(_, at) => at,
        }
    }
}

/// Deepest nesting accepted, so that hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 32;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Token {
        // The token list always ends with `End`, and `pos` never passes it.
        self.tokens[self.pos.min(self.tokens.len() - 1)].clone()
    }

    fn next(&mut self) -> Token {
        let t = self.peek();
        if t.kind != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, kind: Tok) -> Result<Token> {
        let t = self.next();
        if t.kind == kind {
            Ok(t)
        } else {
            Err(t.error(format!(
                "expected {}, found {}",
                kind.describe(),
                t.kind.describe()
            )))
        }
    }

    fn value(&mut self) -> Result<Value> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<Value> {
        let t = self.next();
        if depth > MAX_DEPTH {
            return Err(t.error("nested too deeply".into()));
        }
        match t.kind.clone() {
            Tok::Int(i) => Ok(Value::Int(i, t)),
            Tok::Str(s) => Ok(Value::Str(s, t)),
            Tok::LBracket => {
                let items = self.sequence(Tok::RBracket, depth)?;
                Ok(Value::List(items, t))
            }
            Tok::LParen => {
                let items = self.sequence(Tok::RParen, depth)?;
                Ok(Value::Tuple(items, t))
            }
            Tok::Ident(first) => {
                let mut name = first;
                while self.peek().kind == Tok::Dot {
                    self.next();
                    match self.next() {
                        Token {
                            kind: Tok::Ident(part),
                            ..
                        } => name = part,
                        other => {
                            return Err(other.error(format!(
                                "expected a name after `.`, found {}",
                                other.kind.describe()
                            )))
                        }
                    }
                }
                self.expect(Tok::LParen)?;
                let mut args = Vec::new();
                while self.peek().kind != Tok::RParen {
                    let keyword = match (&self.peek().kind, self.tokens.get(self.pos + 1)) {
                        (Tok::Ident(k), Some(Token { kind: Tok::Eq, .. })) => {
                            let k = k.clone();
                            self.pos += 2;
                            Some(k)
                        }
                        _ => None,
                    };
                    args.push((keyword, self.value_at(depth + 1)?));
                    if self.peek().kind == Tok::Comma {
                        self.next();
                    } else if self.peek().kind != Tok::RParen {
                        let t = self.peek();
                        return Err(
                            t.error(format!("expected `,` or `)`, found {}", t.kind.describe()))
                        );
                    }
                }
                self.next();
                Ok(Value::Call { name, args, at: t })
            }
            other => Err(t.error(format!("expected a value, found {}", other.describe()))),
        }
    }

    fn sequence(&mut self, close: Tok, depth: usize) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        while self.peek().kind != close {
            items.push(self.value_at(depth + 1)?);
            if self.peek().kind == Tok::Comma {
                self.next();
            } else if self.peek().kind != close {
                let t = self.peek();
                return Err(t.error(format!(
                    "expected `,` or {}, found {}",
                    close.describe(),
                    t.kind.describe()
                )));
            }
        }
        self.next();
        Ok(items)
    }
}

fn interpret(value: Value) -> Result<Genotype> {
    let Value::Call { name, args, at } = value else {
        return Err(value.at().error("expected `Genotype(...)`".into()));
    };
    if name != "Genotype" {
        return Err(at.error(format!("expected `Genotype(...)`, found `{name}(...)`")));
    }
    let is_rnn = args
        .iter()
        .any(|(k, _)| k.as_deref() == Some("recurrent") || k.as_deref() == Some("concat"))
        || (args.iter().all(|(k, _)| k.is_none()) && args.len() == 2);
    let field_names: &[&str] = if is_rnn {
        &["recurrent", "concat"]
    } else {
        &["normal", "normal_concat", "reduce", "reduce_concat"]
    };
    let mut fields: Vec<Option<Value>> = field_names.iter().map(|_| None).collect();
    for (pos, (keyword, value)) in args.into_iter().enumerate() {
        let slot = match &keyword {
            Some(k) => field_names.iter().position(|f| f == k).ok_or_else(|| {
                value.at().error(format!(
                    "unknown field `{k}`; a {} genotype has fields {}",
                    if is_rnn { "recurrent" } else { "CNN" },
                    field_names.join(", ")
                ))
            })?,
            None if pos < field_names.len() => pos,
            None => {
                return Err(value.at().error(format!(
                    "too many fields; expected {}",
                    field_names.join(", ")
                )))
            }
        };
        if fields[slot].is_some() {
            return Err(value
                .at()
                .error(format!("field `{}` given twice", field_names[slot])));
        }
        fields[slot] = Some(value);
    }
    let mut taken = Vec::new();
    for (slot, value) in fields.into_iter().enumerate() {
        taken
            .push(value.ok_or_else(|| at.error(format!("missing field `{}`", field_names[slot])))?);
    }
    let mut taken = taken.into_iter();
    let mut take = || taken.next().expect("one value per field was checked above");
    if is_rnn {
        let recurrent = edges::<RnnOp>(take())?
            .into_iter()
            .map(RnnEdge::from)
            .collect();
        let concat = concat(take())?;
        Ok(Genotype::DartsRnn(RnnGenotype::new(recurrent, concat)?))
    } else {
        let normal = edges::<CnnOp>(take())?;
        let normal_concat = concat(take())?;
        let reduce = edges::<CnnOp>(take())?;
        let reduce_concat = concat(take())?;
        let cell = |name, e: Vec<(CnnOp, usize)>, c| {
            CnnCell::new(
                name,
                e.into_iter().map(CnnEdge::from).collect(),
                DEFAULT_INPUTS_PER_NODE,
                c,
            )
        };
        Ok(Genotype::DartsCnn(CnnGenotype::new(
            cell("normal cell", normal, normal_concat)?,
            cell("reduce cell", reduce, reduce_concat)?,
        )?))
    }
}

fn edges<T: std::str::FromStr<Err = Error>>(value: Value) -> Result<Vec<(T, usize)>> {
    let Value::List(items, _) = value else {
        return Err(value
            .at()
            .error("expected a list of (op, input) tuples".into()));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Tuple(mut pair, at) if pair.len() == 2 => {
                let input = pair.pop().expect("length checked");
                let op = pair.pop().expect("length checked");
                let op = match op {
                    Value::Str(s, _) => s.parse::<T>()?,
                    other => {
                        return Err(other.at().error("expected the op name as a string".into()))
                    }
                };
                let input = match input {
                    Value::Int(i, _) => i,
                    other => {
                        return Err(other
                            .at()
                            .error("expected the input index as an integer".into()))
                    }
                };
                let _ = at;
                Ok((op, input))
            }
            other => Err(other.at().error("expected an (op, input) tuple".into())),
        })
        .collect()
}

fn concat(value: Value) -> Result<Concat> {
    match value {
        Value::List(items, _) => items
            .into_iter()
            .map(|v| match v {
                Value::Int(i, _) => Ok(i),
                other => Err(other.at().error("expected an integer state index".into())),
            })
            .collect::<Result<Vec<_>>>()
            .map(Concat::List),
        Value::Call { name, mut args, at }
            if name == "list" && args.len() == 1 && args[0].0.is_none() =>
        {
            concat(args.pop().expect("length checked").1)
                .map_err(|_| at.error("expected list(range(...))".into()))
        }
        Value::Call { name, args, at } if name == "range" => {
            let ints = args
                .into_iter()
                .map(|(k, v)| match (k, v) {
                    (None, Value::Int(i, _)) => Ok(i),
                    (_, other) => Err(other.at().error("range() takes integer arguments".into())),
                })
                .collect::<Result<Vec<_>>>()?;
            match ints[..] {
                [end] => Ok(Concat::range(0, end)),
                [start, end] => Ok(Concat::range(start, end)),
                _ => Err(at.error("expected range(end) or range(start, end)".into())),
            }
        }
        other => Err(other
            .at()
            .error("expected a concat list or range(start, end)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_genotypes_py_holds() {
        let text = "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), (\"sep_conv_3x3\", 1),\n  # comment\n  ('skip_connect', 0), ('dil_conv_3x3', 2),], normal_concat=[2, 3],\n reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 4))";
        let Genotype::DartsCnn(g) = parse(text).unwrap() else {
            panic!("expected a CNN genotype")
        };
        assert_eq!(g.normal().n_nodes(), 2);
        assert_eq!(g.reduce().concat(), &Concat::range(2, 4));
        assert_eq!(
            g.to_python().unwrap(),
            "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 4))"
        );
    }

    #[test]
    fn positional_rnn_and_list_range() {
        let g = parse("genotypes.Genotype([('tanh', 0), ('relu', 1)], list(range(1, 3)))").unwrap();
        assert_eq!(
            g.to_python().unwrap(),
            "Genotype(recurrent=[('tanh', 0), ('relu', 1)], concat=range(1, 3))"
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("Genotype(recurrent=[('tanh', 0)], concat=[1]", "python notation at line 1, column 45: expected `,` or `)`, found end of input"),
            ("Genotype(recurrent=[('tanh', 0)], concat=[1], extra=2)", "python notation at line 1, column 53: unknown field `extra`; a recurrent genotype has fields recurrent, concat"),
            ("Genotype(recurrent=[('tanhh', 0)], concat=[1])", "unknown darts-rnn primitive \"tanhh\"; expected one of: none, tanh, relu, sigmoid, identity"),
            ("Genotype(recurrent=[('tanh', 0)])", "python notation at line 1, column 1: missing field `concat`"),
            ("Genotype(recurrent=[('tanh', 0)], concat=[1]) x", "python notation at line 1, column 47: unexpected name `x` after the genotype"),
            ("Genotype(recurrent=[('tanh, 0)], concat=[1])", "python notation at line 1, column 22: unterminated string"),
            ("Foo(a=1)", "python notation at line 1, column 1: expected `Genotype(...)`, found `Foo(...)`"),
            ("Genotype(recurrent=[('tanh', 1)], concat=[1])", "recurrent cell: node 1 takes input 1, but only states 0..=0 come before it"),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).unwrap_err().to_string(), expected, "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!(
            "Genotype(recurrent={}{}, concat=[1])",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("nested too deeply"));
    }

    #[test]
    fn huge_range_is_an_error_not_an_allocation() {
        // Used to list all 10**14 states of the range before checking them (out of memory).
        let err = parse("Genotype(recurrent=[('tanh', 0)], concat=range(1, 100000000000000))")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "recurrent cell: concat entry 2 is not a state of the cell (expected 0..=1)"
        );
        let text = format!(
            "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=range({}), reduce=[('skip_connect', 0), ('skip_connect', 1)], reduce_concat=[2])",
            usize::MAX
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "normal cell: concat entry 3 is not a state of the cell (expected 0..=2)"
        );
    }
}
