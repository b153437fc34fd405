//! YAML decoding with positions: documents are split at their `---` markers so that each can
//! be decoded into the type its `kind` calls for, and every error is mapped back to a line
//! and column of the whole file plus the path of the field at fault.

use serde::de::DeserializeOwned;
use serde_saphyr::{Budget, options::Options};

use super::PolicyError;

/// Largest policy file accepted. Far above any real allow-list (100k addresses as CIDRs is
/// about 2 MB), low enough that a runaway generator cannot exhaust the agent.
pub const MAX_POLICY_BYTES: usize = 16 * 1024 * 1024;

/// One YAML document of a file.
pub struct Document<'a> {
    pub text: &'a str,
    /// 1-based line of the file at which `text` starts.
    pub first_line: u64,
}

/// Splits a YAML stream into its documents. A line that starts with `---` followed by
/// a space, a tab or the end of the line is always a document marker: YAML forbids such a
/// line inside a scalar (YAML 1.2.2 §9.1.4, `c-forbidden`). Documents that hold only
/// comments and blank lines are dropped.
pub fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u64;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t'));
        if is_marker && offset > start {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset;
            start_line = i as u64 + 1;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
    });
    docs.retain(|d| has_content(d.text));
    docs
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        !(l.is_empty() || l.starts_with('#') || l == "---" || l == "..." || l.starts_with("%"))
    })
}

fn options() -> Options {
    let mut options = Options::default();
    // Alias expansion is bounded (billion-laughs); the defaults of serde-saphyr's budget are
    // far above what a policy needs, so tighten the ones an attacker would use.
    let mut budget = Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

/// Decodes `doc` into `T`, turning any error into a [`PolicyError::Invalid`] positioned in
/// the whole file.
pub fn decode<T: DeserializeOwned>(doc: &Document<'_>, file: &str) -> Result<T, PolicyError> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(doc.text, options(), |de| {
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = strip_location(&e.to_string());
        let field = match path.as_str() {
            "" | "." | "?" => "(document)".to_owned(),
            p => without_spans(p),
        };
        PolicyError::invalid(
            file,
            (doc.first_line + line.max(1) - 1, column.max(1)),
            field,
            message,
        )
    })
}

/// `Spanned<T>` wrappers show up as a `value` segment in field paths; no schema field is
/// called `value`, so drop the segment.
fn without_spans(path: &str) -> String {
    path.split('.')
        .filter(|s| *s != "value")
        .collect::<Vec<_>>()
        .join(".")
}

/// serde-saphyr appends ` at line L, column C` to its messages; the position is reported
/// separately (and relative to the whole file), so drop it from the text.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_markers_and_keeps_line_numbers() {
        let text = "# header\na: 1\n---\nb: 2\n--- # c\nc: 3\n---\n# only a comment\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].first_line, 1);
        assert_eq!(docs[1].first_line, 3);
        assert!(docs[1].text.contains("b: 2"));
        assert_eq!(docs[2].first_line, 5);
        assert!(split_documents("").is_empty());
        assert!(split_documents("# nothing\n\n---\n").is_empty());
    }

    #[test]
    fn a_dashed_line_inside_a_block_scalar_is_indented_so_not_a_marker() {
        let docs = split_documents("a: |\n  ---\n  text\nb: 1\n");
        assert_eq!(docs.len(), 1);
    }
}
