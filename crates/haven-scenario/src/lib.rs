//! Test-only helpers shared by Haven's scenario-file runners and unit tests: nothing here
//! ships, and nothing here knows a directive.
//!
//! - [`Line`]: a scenario line split into words and `key=value` options (values may be
//!   quoted), with the accessors every runner uses and [`Line::only`] to refuse what a
//!   directive does not know.
//! - [`split`]: a file's setup above its `---` line, tokenized line by line, and the lines
//!   below it.
//! - [`files`] and [`check`]: the `tests/scenarios/*.scn` files of a crate and the test
//!   loop over them (compare, or rewrite with `UPDATE_EXPECT=1`; collect every failure
//!   with a [`diff`]).
//! - [`node`]: the cluster member the tests of several crates build their states from.
//!
//! Each runner keeps its own directives and its own output format; this crate must not grow
//! knowledge of either (it depends on `haven-model` only, for the fixture).

mod fixture;
mod line;
mod run;

pub use fixture::node;
pub use line::Line;
pub use run::{Checked, Sections, at, check, diff, file_name, files, split};

/// A parse, setup or run error, already prefixed with `file:line: ` where it has a line.
pub type Error = String;
