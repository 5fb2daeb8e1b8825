//! A file a config names, with its place in the text, for the problems
//! found when it is read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::Report;

/// A file a config names (relative to the config's own directory), at its
/// place in the text.
#[derive(Debug, Clone)]
pub(super) struct FileRef {
    pub path: PathBuf,
    pub span: Range<usize>,
}

impl FileRef {
    pub fn at(base: &Path, file: &Spanned<PathBuf>) -> Self {
        Self {
            path: base.join(file.get_ref()),
            span: file.span(),
        }
    }

    pub fn exists(&self, report: &mut Report<'_>, what: &str) -> bool {
        let found = self.path.is_file();
        if !found {
            report.push(
                self.span.clone(),
                format!("{what}: no such file {}", self.path.display()),
            );
        }
        found
    }
}
