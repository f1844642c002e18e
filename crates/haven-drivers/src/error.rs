//! Errors a driver reports to the agent. Each message names the resource, the command or
//! file involved, and what an operator can do about it, because the agent shows these
//! messages as the resource's failure reason without rewording them.

use std::io;
use std::path::PathBuf;

use haven_model::{Dur, InvalidInput};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("resource {resource:?} has invalid parameters: {source}; fix the resource definition")]
    InvalidParams {
        resource: String,
        #[source]
        source: InvalidInput,
    },

    #[error(
        "resource {resource:?}: cannot prepare {path}: {source}; check that the agent's state \
         directory exists and is writable by the agent"
    )]
    RunDir {
        resource: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "resource {resource:?}: user {user:?} does not exist on node {node:?}; create the user \
         there or change params.user"
    )]
    UnknownUser { resource: String, node: String, user: String },

    #[error("resource {resource:?}: cannot look up user {user:?}: {source}")]
    UserLookup {
        resource: String,
        user: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "resource {resource:?}: running it as user {user:?} needs the agent to run as root, but \
         the agent runs as uid {agent_uid}; run the agent as root or remove params.user"
    )]
    NotRoot { resource: String, user: String, agent_uid: u32 },

    #[error("resource {resource:?}: cannot start `{command}`: {source}; {hint}")]
    Spawn {
        resource: String,
        command: String,
        hint: String,
        #[source]
        source: io::Error,
    },

    #[error("resource {resource:?}: `{command}` {what}; {output}")]
    ExitedAtStart { resource: String, command: String, what: String, output: String },

    #[error(
        "resource {resource:?}: `{command}` started but its health check did not pass within \
         pending_timeout {pending_timeout} (last result: {last_result}), so it was stopped; \
         fix the program or the check, or raise props.pending_timeout if it needs longer to \
         come up; {output}"
    )]
    CheckTimedOut { resource: String, command: String, pending_timeout: Dur, last_result: String, output: String },

    #[error(
        "resource {resource:?}: cannot {action} pid file {path}: {source}; check the agent's \
         state directory"
    )]
    PidFile {
        resource: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "resource {resource:?}: cannot read /proc/{pid}/stat: {source}; the agent needs /proc \
         mounted and readable"
    )]
    Proc {
        resource: String,
        pid: i32,
        #[source]
        source: io::Error,
    },

    #[error("resource {resource:?}: cannot send {signal} to process group {pgid}: {source}")]
    Signal {
        resource: String,
        signal: &'static str,
        pgid: i32,
        #[source]
        source: io::Error,
    },

    #[error(
        "resource {resource:?}: processes {pids:?} of `{command}` are still alive {waited} after \
         SIGKILL; they are probably stuck in the kernel (state D, e.g. a hung NFS mount); \
         inspect them with `ps -o pid,stat,wchan,cmd -p <pid>` and fix the cause"
    )]
    StillRunning { resource: String, command: String, pids: Vec<i32>, waited: Dur },

    /// A `disk` resource's volume cannot be found, claimed or exposed; the message says why
    /// and what to do.
    #[error("resource {resource:?}: {message}")]
    Volume { resource: String, message: String },

    /// A `vm-config` resource's definition cannot be read, validated or registered.
    #[error("resource {resource:?}: {message}")]
    VmDefinition { resource: String, message: String },

    /// A `vm` resource cannot be started, stopped or looked at.
    #[error("resource {resource:?}: {message}")]
    Vm { resource: String, message: String },
}
