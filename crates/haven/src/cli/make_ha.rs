//! `haven vm make-ha`: the High Availability wizard's request and its report for people
//! (each check with its verdict, the path rewrites, the plan and the outcome).

use haven_api::{Client, MakeHaRequest};
use haven_model::HaReport;

use super::{EXIT_REFUSED, Failure};
use crate::output::{self, Format};

/// Runs the wizard; exit status 1 (after the report) when a check failed.
pub(super) async fn run(c: &Client, fmt: Format, request: MakeHaRequest) -> Result<(), Failure> {
    let report = c.make_ha(&request).await?;
    if fmt == Format::Json {
        output::json(&report);
    } else {
        print_ha_report(&report);
    }
    if !report.ok {
        return Err(Failure {
            code: EXIT_REFUSED,
            message: format!(
                "the HA wizard refused VM {:?}: {} check(s) failed (above); nothing was changed",
                report.vm, report.errors
            ),
        });
    }
    Ok(())
}

/// Words of `text` in lines of at most `width` characters, each indented by `indent`.
fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(indent);
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(indent);
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The wizard's report for people: each check with its verdict and message, the path
/// rewrites, the plan and the outcome.
fn print_ha_report(r: &HaReport) {
    println!("HA wizard: VM {:?} from {} on node {:?}", r.vm, r.definition, r.node);
    println!("group: {}", r.group.as_deref().map(|g| format!("{g:?}")).unwrap_or_else(|| "-".into()));
    println!();
    for c in &r.checks {
        println!("[{}] {} {} — {}", c.result.as_str().to_uppercase(), c.id, c.check, c.title);
        print!("{}", wrap(&c.message, 96, "       "));
    }
    if !r.fixes.is_empty() {
        println!();
        println!("path rewrites (--fix), before → after:");
        for f in &r.fixes {
            let state = if f.applied { "written" } else { "not written" };
            println!("  {} {}: {:?} → {:?} ({state})", f.file, f.field, f.before, f.after);
        }
    }
    if !r.plan.is_empty() {
        println!();
        println!(
            "{}",
            if r.applied { "changes made (one request):" } else { "changes to make (one request, all or nothing):" }
        );
        for (i, p) in r.plan.iter().enumerate() {
            print!("{}", wrap(&format!("{}. {p}", i + 1), 92, "  "));
        }
    }
    println!();
    println!("{}", r.summary());
}
