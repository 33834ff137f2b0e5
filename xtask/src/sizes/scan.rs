//! A brace-aware look at Rust source, enough for sizes and imports (not a parser): comments,
//! strings and char literals are blanked out so the braces and paths that remain are code.

/// `text` with comments, string and char literal contents replaced by spaces (newlines kept, so
/// byte offsets and line numbers stay those of the file).
pub fn blank(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let skip = if c == '/' && next == Some('/') {
            line_comment(&b, i)
        } else if c == '/' && next == Some('*') {
            block_comment(&b, i)
        } else if c == '"' {
            string(&b, i + 1)
        } else if (c == 'r' || (c == 'b' && next == Some('r'))) && !ident_before(&b, i) {
            raw_string(&b, i).unwrap_or(i + 1)
        } else if c == '\'' {
            char_literal(&b, i).unwrap_or(i + 1)
        } else {
            i + 1
        };
        if skip == i + 1 {
            out.push(c);
        } else {
            // Keep the delimiters' line structure only.
            out.extend(
                b[i..skip]
                    .iter()
                    .map(|&c| if c == '\n' { '\n' } else { ' ' }),
            );
        }
        i = skip;
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

fn line_comment(b: &[char], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && b[j] != '\n' {
        j += 1;
    }
    j
}

fn block_comment(b: &[char], i: usize) -> usize {
    let (mut j, mut depth) = (i + 2, 1);
    while j < b.len() && depth > 0 {
        if b[j] == '/' && b.get(j + 1) == Some(&'*') {
            depth += 1;
            j += 1;
        } else if b[j] == '*' && b.get(j + 1) == Some(&'/') {
            depth -= 1;
            j += 1;
        }
        j += 1;
    }
    j
}

/// From just after the opening quote to just after the closing one.
fn string(b: &[char], mut j: usize) -> usize {
    while j < b.len() {
        match b[j] {
            '\\' => j += 2,
            '"' => return j + 1,
            _ => j += 1,
        }
    }
    j
}

/// `r"..."`, `r#"..."#`, `br"..."`: None when this `r` starts an identifier instead.
fn raw_string(b: &[char], i: usize) -> Option<usize> {
    let mut j = if b[i] == 'b' { i + 2 } else { i + 1 };
    let mut hashes = 0;
    while b.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if b.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(j)
}

/// `'x'`, `'\n'`, `'\u{..}'`; None for a lifetime (`'a`).
fn char_literal(b: &[char], i: usize) -> Option<usize> {
    if b.get(i + 1) == Some(&'\\') {
        let mut j = i + 2;
        while j < b.len() && b[j] != '\'' && b[j] != '\n' {
            j += 1;
        }
        return Some(j + 1);
    }
    (b.get(i + 2) == Some(&'\'')).then_some(i + 3)
}

/// Byte offset of each `{` mapped to that of its matching `}` (in blanked text).
pub fn brace_pairs(code: &str) -> std::collections::HashMap<usize, usize> {
    let mut stack = Vec::new();
    let mut pairs = std::collections::HashMap::new();
    for (i, c) in code.char_indices() {
        match c {
            '{' => stack.push(i),
            '}' => {
                if let Some(open) = stack.pop() {
                    pairs.insert(open, i);
                }
            }
            _ => {}
        }
    }
    pairs
}

/// A function with a body: name, first and last line (1-based, inclusive).
pub struct FnItem {
    pub name: String,
    pub first: usize,
    pub last: usize,
}

impl FnItem {
    pub fn lines(&self) -> usize {
        self.last - self.first + 1
    }
}

pub fn line_of(code: &str, offset: usize) -> usize {
    code[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Every `fn name ... { ... }` (trait declarations without a body are left out).
pub fn functions(code: &str) -> Vec<FnItem> {
    let pairs = brace_pairs(code);
    let mut out = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        let word_start =
            at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if !word_start {
            continue;
        }
        let rest = code[at + 3..].trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let Some(open) = body_start(code, at) else {
            continue;
        };
        if let Some(&close) = pairs.get(&open) {
            out.push(FnItem {
                name,
                first: line_of(code, at),
                last: line_of(code, close),
            });
        }
    }
    out
}

/// The `{` opening the body of the fn at `at`, None when a `;` comes first (no body).
fn body_start(code: &str, at: usize) -> Option<usize> {
    let mut parens = 0i32;
    for (i, c) in code[at..].char_indices() {
        match c {
            '(' | '[' => parens += 1,
            ')' | ']' => parens -= 1,
            ';' if parens == 0 => return None,
            '{' if parens == 0 => return Some(at + i),
            _ => {}
        }
    }
    None
}

/// Line ranges (inclusive) of `#[cfg(test)] mod x { ... }` blocks.
pub fn test_modules(code: &str) -> Vec<(usize, usize)> {
    let pairs = brace_pairs(code);
    let mut out = Vec::new();
    for (at, _) in code.match_indices("#[cfg(test)]") {
        let after = &code[at..];
        let Some(m) = after.find("mod ") else {
            continue;
        };
        let Some(open) = after[m..].find(['{', ';']).map(|o| at + m + o) else {
            continue;
        };
        // Only an attribute and the `mod` line between the two.
        if code[at..open].lines().count() > 3 || !code[open..].starts_with('{') {
            continue;
        }
        if let Some(&close) = pairs.get(&open) {
            out.push((line_of(code, at), line_of(code, close)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_in_strings_and_chars_do_not_count() {
        let src = "fn a() {\n    let s = \"{\";\n    let c = '}';\n    // {\n    let r = r#\"}\"#;\n}\nfn b<'a>(x: &'a str) -> &'a str { x }\ntrait T { fn d(&self); }\n";
        let code = blank(src);
        let fns = functions(&code);
        let got: Vec<(&str, usize, usize)> = fns
            .iter()
            .map(|f| (f.name.as_str(), f.first, f.last))
            .collect();
        assert_eq!(got, vec![("a", 1, 6), ("b", 7, 7)]);
    }

    #[test]
    fn finds_the_test_module() {
        let src = "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n";
        assert_eq!(test_modules(&blank(src)), vec![(2, 5)]);
    }
}
