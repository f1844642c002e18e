//! Virtual machines: the parameters of the `vm` and `vm-config` resources, the VM
//! definition file a `vm-config` points at (`VmDefinition`, TOML or JSON), and the status
//! a node reports about a running VM (`VmStatus`).
//!
//! Pure: parsing and validation of text only. Whether the files a definition names exist
//! is checked by the `vm-config` driver on the node that registers it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Dur, InvalidInput, bounds, validate_name};

/// Parameters of a `vm-config` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfigParams {
    /// The VM definition file (`.toml` or `.json`), on a cluster volume: either relative to
    /// the volumes directory, `<volume-name>/…` (the same on every node, whatever its
    /// state directory), or absolute, `<state-dir>/volumes/<volume-name>/…`.
    pub path: String,
}

impl VmConfigParams {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let relative_escape = !self.path.starts_with('/') && self.path.split('/').any(|c| c == ".." || c.is_empty());
        if self.path.trim().is_empty() || relative_escape || (!self.path.starts_with('/') && !self.path.contains('/')) {
            return Err(InvalidInput::new(
                "params.path",
                format!(
                    "{:?} is not a path on a cluster volume; write it as \"<volume-name>/<file>\", e.g. \
                     \"vol1/web/vm.toml\", or as an absolute path under the volumes directory",
                    self.path
                ),
            ));
        }
        Ok(())
    }
}

fn d_heartbeat_timeout() -> Dur {
    Dur::from_secs(5)
}
fn d_shutdown_timeout() -> Dur {
    Dur::from_secs(30)
}
fn d_boot_timeout() -> Dur {
    Dur::from_secs(120)
}

/// Parameters of a `vm` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmParams {
    /// The name of its `vm-config` resource (same group; the vm should depend on it).
    pub config: String,
    /// The thorough check fails when the guest's last heartbeat is older than this (only
    /// for definitions with `heartbeat = true`). Default: 5s.
    #[serde(default = "d_heartbeat_timeout")]
    pub heartbeat_timeout: Dur,
    /// How long a graceful stop waits for the guest to power off after the ACPI power
    /// button before QEMU is told to quit. Default: 30s.
    #[serde(default = "d_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// How long after start the guest may take to send its first heartbeat. Default: 2m.
    #[serde(default = "d_boot_timeout")]
    pub boot_timeout: Dur,
}

impl VmParams {
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_name("params.config", &self.config)?;
        // The guest sends a heartbeat every second: a shorter timeout fails a healthy VM.
        bounds::HEARTBEAT_TIMEOUT.check_dur(self.heartbeat_timeout)?;
        bounds::SHUTDOWN_TIMEOUT.check_dur(self.shutdown_timeout)?;
        bounds::BOOT_TIMEOUT.check_dur(self.boot_timeout)?;
        Ok(())
    }
}

/// Which hardware acceleration a VM runs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM if a short probe shows it works on this node, else TCG. Default.
    #[default]
    Auto,
    /// Hardware virtualisation; the VM fails to start where KVM does not work.
    Kvm,
    /// Software emulation: works everywhere, much slower.
    Tcg,
}

impl Accel {
    pub fn as_str(&self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Disk image format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Raw,
    /// qcow2, possibly with a chain of backing files (differencing disks).
    Qcow2,
}

/// How a disk is attached to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskInterface {
    #[default]
    Virtio,
    Ide,
}

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    /// The image file: absolute, or relative to the definition file's directory.
    pub path: String,
    /// Default: raw.
    #[serde(default)]
    pub format: ImageFormat,
    /// Default: virtio.
    #[serde(default)]
    pub interface: DiskInterface,
}

/// What a network card is connected to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicMode {
    /// QEMU's user-mode network (NAT, no inbound connections). Default.
    #[default]
    User,
    /// A card with no network behind it (cable unplugged).
    None,
}

/// Emulated network card model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// virtio-net. Default.
    #[default]
    Virtio,
    E1000,
}

/// One network card of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmNic {
    #[serde(default)]
    pub mode: NicMode,
    #[serde(default)]
    pub model: NicModel,
    /// `52:54:00:xx:xx:xx`; default: chosen by QEMU.
    #[serde(default)]
    pub mac: Option<String>,
}

/// How a VM boots: a kernel (with optional initrd and command line), or one of its disks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmBoot {
    /// Kernel image (absolute, or relative to the definition file).
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Boot from `disks[disk]` through the firmware.
    #[serde(default)]
    pub disk: Option<usize>,
}

/// A VM definition: the file a `vm-config` resource points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's name, unique on a node.
    pub name: String,
    /// Virtual CPUs, at least 1.
    pub vcpus: u32,
    /// Memory in MiB, at least 16.
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<VmDisk>,
    /// Network cards; may be empty.
    #[serde(default)]
    pub nics: Vec<VmNic>,
    pub boot: VmBoot,
    /// The guest prints `heartbeat <name> <boot_id> <seq>` lines on its second serial port
    /// (ttyS1), which the thorough check watches. Default: false.
    #[serde(default)]
    pub heartbeat: bool,
    /// Default: auto.
    #[serde(default)]
    pub accel: Accel,
}

/// The syntax of a definition file, chosen by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefinitionFormat {
    Toml,
    Json,
}

impl DefinitionFormat {
    /// `.json` is JSON; anything else is read as TOML.
    pub fn for_path(path: &str) -> DefinitionFormat {
        if path.to_ascii_lowercase().ends_with(".json") { DefinitionFormat::Json } else { DefinitionFormat::Toml }
    }
}

impl VmDefinition {
    /// Parses and validates a definition given as text by the caller (an API body); the
    /// error's field is the path inside the text (`disks[0].format`, `memory_mib`).
    /// Parse errors give a line and column, never a line of the text.
    pub fn parse(text: &str, format: DefinitionFormat) -> Result<VmDefinition, InvalidInput> {
        parse_as(text, format, None)
    }

    /// Parses and validates the definition file at `path` (read by the caller). The format
    /// follows the name (`.json` is JSON, anything else TOML). The file may be anything a
    /// client named, so an error never quotes it: a file that does not parse is "not a VM
    /// definition" at a line and column, and a field that does not fit is named with what
    /// it should be, not what it holds. Only a file that is a definition in every field
    /// gets its values quoted (by `validate`).
    pub fn parse_file(text: &str, path: &str) -> Result<VmDefinition, InvalidInput> {
        parse_as(text, DefinitionFormat::for_path(path), Some(path))
    }

    /// Checks the values (not the files they name).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        validate_name("name", &self.name)?;
        bounds::VCPUS.check_count(u64::from(self.vcpus))?;
        bounds::VM_MEMORY_MIB.check_count(self.memory_mib)?;
        bounds::VM_DISKS.check_count(self.disks.len() as u64)?;
        bounds::VM_NICS.check_count(self.nics.len() as u64)?;
        for (i, d) in self.disks.iter().enumerate() {
            if d.path.trim().is_empty() {
                return Err(InvalidInput::new(format!("disks[{i}].path"), "is empty; give the image file"));
            }
        }
        for (i, n) in self.nics.iter().enumerate() {
            if let Some(mac) = &n.mac
                && !is_mac(mac)
            {
                return Err(InvalidInput::new(
                    format!("nics[{i}].mac"),
                    format!("{mac:?} is not a MAC address; write it like \"52:54:00:12:34:56\""),
                ));
            }
        }
        let b = &self.boot;
        match (&b.kernel, b.disk) {
            (Some(_), Some(_)) => {
                return Err(InvalidInput::new(
                    "boot",
                    "gives both kernel and disk; boot either a kernel (kernel, initrd, cmdline) or a disk (disk = <index>)",
                ));
            }
            (None, None) => {
                return Err(InvalidInput::new(
                    "boot",
                    "says nothing; give a kernel (kernel = \"vmlinuz\", with optional initrd and cmdline) or a disk \
                     (disk = 0)",
                ));
            }
            (Some(k), None) if k.trim().is_empty() => {
                return Err(InvalidInput::new("boot.kernel", "is empty; give the kernel image file"));
            }
            (None, Some(i)) if i >= self.disks.len() => {
                return Err(InvalidInput::new(
                    "boot.disk",
                    format!("{i} is not a disk of this VM; it has {} disk(s), numbered from 0", self.disks.len()),
                ));
            }
            (None, Some(_)) if b.initrd.is_some() || b.cmdline.is_some() => {
                return Err(InvalidInput::new(
                    "boot",
                    "initrd and cmdline only go with kernel; remove them to boot from a disk",
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

fn field_of(path: &str) -> String {
    if path == "." || path.is_empty() { "definition".to_string() } else { path.to_string() }
}

/// Where a parse error is: line and column, both from 1.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn parse_as(text: &str, format: DefinitionFormat, file: Option<&str>) -> Result<VmDefinition, InvalidInput> {
    let syntax = match format {
        DefinitionFormat::Json => "JSON",
        DefinitionFormat::Toml => "TOML",
    };
    let not_a_definition = |(line, column): (usize, usize)| {
        let message = match file {
            Some(path) => format!(
                "{path} is not a VM definition (TOML, or JSON for a name ending in .json): {syntax} parse error at \
                 line {line}, column {column}; give the path of a VM definition file, or fix its syntax there"
            ),
            None => format!(
                "is not a VM definition: {syntax} parse error at line {line}, column {column}; fix the syntax there"
            ),
        };
        InvalidInput::new("definition", message)
    };
    let misfit = |path: String, message: &str, at: Option<(usize, usize)>| {
        // An unknown key is the last segment of the path: name the object it is in instead,
        // since the key itself is the file's content.
        let unknown_key = message.starts_with("unknown field");
        let field = if unknown_key { parent_of(&path) } else { field_of(&path) };
        let reason = without_values(message);
        let at = match (at, file) {
            (Some((l, c)), Some(path)) => format!(" (line {l}, column {c} of {path}); fix the definition file"),
            (Some((l, c)), None) => format!(" (line {l}, column {c})"),
            (None, Some(path)) => format!(" ({path}); fix the definition file"),
            (None, None) => String::new(),
        };
        InvalidInput::new(field, format!("{reason}{at}"))
    };
    let def: VmDefinition = match format {
        DefinitionFormat::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let def = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let at = (inner.line(), inner.column());
                match inner.classify() {
                    serde_json::error::Category::Data => {
                        let full = inner.to_string();
                        let suffix = format!(" at line {} column {}", at.0, at.1);
                        misfit(path, full.strip_suffix(&suffix).unwrap_or(&full), Some(at))
                    }
                    _ => not_a_definition(at),
                }
            })?;
            de.end().map_err(|e| not_a_definition((e.line(), e.column())))?;
            def
        }
        DefinitionFormat::Toml => {
            let span_at = |e: &toml::de::Error| e.span().map(|s| line_column(text, s.start));
            let de = toml::Deserializer::parse(text).map_err(|e| not_a_definition(span_at(&e).unwrap_or((1, 1))))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let at = span_at(&inner);
                let known = KNOWN_SERDE_ERRORS.iter().any(|p| inner.message().starts_with(p));
                if !known && field_of(&path) == "definition" {
                    // A syntax error found while deserializing.
                    not_a_definition(at.unwrap_or((1, 1)))
                } else {
                    misfit(path, inner.message(), at)
                }
            })?
        }
    };
    def.validate().map_err(|e| match file {
        Some(path) => InvalidInput::new(e.field, format!("{} ({path}); fix the definition file", e.message)),
        None => e,
    })?;
    Ok(def)
}

fn parent_of(path: &str) -> String {
    match path.rfind(['.', '[']) {
        Some(i) if i > 0 => path[..i].to_string(),
        _ => "definition".to_string(),
    }
}

/// How serde's own data errors begin (serde::de::Error's provided messages).
const KNOWN_SERDE_ERRORS: &[&str] = &[
    "invalid type: ",
    "invalid value: ",
    "invalid length ",
    "unknown variant ",
    "unknown field ",
    "missing field ",
    "duplicate field ",
];

/// What a serde data error says, without the values of the input it quotes:
/// `invalid type: string "two", expected u32` becomes `wrong type; expected u32`. What
/// follows "expected" comes from the definition's schema, not from the input. Field names
/// in `missing field`/`duplicate field` are the schema's (only known fields are noticed).
fn without_values(message: &str) -> String {
    let expected = message.rfind(", expected ").map(|i| &message[i + 2..]);
    let with_expected = |what: &str| match expected {
        Some(e) => format!("{what}; {e}"),
        None => what.to_string(),
    };
    if message.starts_with("invalid type: ") {
        with_expected("wrong type")
    } else if message.starts_with("invalid value: ") {
        with_expected("value out of range or not accepted")
    } else if message.starts_with("invalid length ") {
        with_expected("wrong number of elements")
    } else if message.starts_with("unknown variant ") {
        with_expected("unknown variant")
    } else if message.starts_with("unknown field ") {
        match expected {
            Some(_) => with_expected("unknown field"),
            None => "unknown field; this table takes no fields".to_string(),
        }
    } else if (message.starts_with("missing field `") || message.starts_with("duplicate field `"))
        && message.matches('`').count() == 2
        && message.ends_with('`')
    {
        message.to_string()
    } else {
        "does not fit a VM definition".to_string()
    }
}

fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What a node reports about a VM it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmStatus {
    /// The accelerator it runs with: `kvm` or `tcg`.
    pub accel: Accel,
    /// Why that accelerator (the definition asked for it, or what the KVM probe saw).
    pub reason_for_accel: String,
    /// The QEMU process.
    pub pid: i32,
    /// Time since the guest's last heartbeat; none if it has sent none (or has no channel).
    pub last_heartbeat_age: Option<Dur>,
    /// Sequence number of the last heartbeat.
    pub last_heartbeat_seq: Option<u64>,
    /// The guest's boot id from its last heartbeat (changes when the guest reboots).
    pub guest_boot_id: Option<String>,
}

/// How one check of the HA wizard (`haven vm make-ha`) came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckResult {
    Pass,
    /// Allowed, but the operator should know (e.g. VMs that will always move together).
    Warn,
    /// Refused: nothing is changed.
    Fail,
    /// Not applicable to this VM (e.g. no qcow2 image, no pass-through disk).
    Skip,
}

impl CheckResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Warn => "warn",
            CheckResult::Fail => "fail",
            CheckResult::Skip => "skip",
        }
    }
}

/// One check of the HA wizard's report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaCheck {
    /// 1–7 for the storage checks, 8 for the cluster changes.
    pub id: u8,
    /// A stable slug: `vm-stopped`, `shared-storage`, `shared-volume`, `backing-chain`,
    /// `cluster-path`, `nested-volume`, `pass-through`, `cluster-changes`.
    pub check: String,
    pub title: String,
    pub result: CheckResult,
    /// What was seen, naming the files, volumes and groups, and the fix.
    pub message: String,
}

/// A path `--fix` rewrites (or would rewrite, with `--dry-run`) to its cluster-managed form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaPathFix {
    /// The file changed: the definition, or a qcow2 image whose backing reference changes.
    pub file: String,
    /// Where in it: `disks[0].path`, `boot.kernel`, `backing file`.
    pub field: String,
    pub before: String,
    pub after: String,
    /// Whether the change was written (false for `--dry-run`, or when another check failed).
    pub applied: bool,
}

/// The report of one run of the HA wizard: every check, the changes it made or would
/// make, and whether the VM is now highly available. Kept in the cluster's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaReport {
    /// The VM's name in the cluster (its `vm` resource); its `vm-config` is `<vm>-config`.
    pub vm: String,
    /// The definition file as the operator gave it.
    pub definition: String,
    /// The node whose files were checked (where the VM is defined).
    pub node: String,
    /// The group the VM joins (or would join); none when that could not be decided.
    pub group: Option<String>,
    /// No check failed.
    pub ok: bool,
    /// Nothing was submitted: the plan is what would be.
    pub dry_run: bool,
    /// The cluster changes were committed.
    pub applied: bool,
    pub checks: Vec<HaCheck>,
    /// `--fix` rewrites of node-local paths, before → after.
    #[serde(default)]
    pub fixes: Vec<HaPathFix>,
    /// The cluster changes, one line each, in the order they apply (all in one request).
    #[serde(default)]
    pub plan: Vec<String>,
    pub warnings: u32,
    pub errors: u32,
}

impl HaReport {
    /// Sets `ok`, `warnings` and `errors` from the checks.
    pub fn tally(&mut self) {
        self.warnings = self.checks.iter().filter(|c| c.result == CheckResult::Warn).count() as u32;
        self.errors = self.checks.iter().filter(|c| c.result == CheckResult::Fail).count() as u32;
        self.ok = self.errors == 0;
    }

    /// One line for the history: the outcome and the counts.
    pub fn summary(&self) -> String {
        let outcome = match (self.ok, self.applied, self.dry_run) {
            (true, true, _) => format!("is now highly available in group {:?}", self.group.as_deref().unwrap_or("-")),
            (true, false, true) => "passed every check (dry run: nothing changed)".to_string(),
            (true, false, false) => "passed every check but nothing was changed".to_string(),
            (false, _, _) => "was refused; nothing was changed".to_string(),
        };
        format!(
            "HA wizard: VM {:?} ({} on node {:?}) {outcome}; {} error(s), {} warning(s)",
            self.vm, self.definition, self.node, self.errors, self.warnings
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "web"
vcpus = 1
memory_mib = 256
heartbeat = true
[boot]
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=ttyS0"
[[disks]]
path = "data.img"
"#;

    fn err(text: &str) -> InvalidInput {
        VmDefinition::parse(text, DefinitionFormat::Toml).unwrap_err()
    }

    #[test]
    fn parses_with_defaults() {
        let d = VmDefinition::parse(GOOD, DefinitionFormat::Toml).unwrap();
        assert_eq!(d.accel, Accel::Auto);
        assert_eq!(d.disks[0].format, ImageFormat::Raw);
        assert_eq!(d.disks[0].interface, DiskInterface::Virtio);
        assert!(d.nics.is_empty());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(VmDefinition::parse(&json, DefinitionFormat::Json).unwrap(), d);
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("memory_mib = 256", "memory_mib = 0"));
        assert_eq!(
            e.to_string(),
            "invalid memory_mib: 0 is too small; the least allowed is 16 (use 16 to 67108864 MiB)"
        );
        let e = err(&GOOD.replace("vcpus = 1", "vcpus = 0"));
        assert_eq!(e.field, "vcpus");
        let e = err(&GOOD.replace("path = \"data.img\"", "path = \"data.img\"\nformat = \"vhd\""));
        assert_eq!(e.field, "disks[0].format", "{e}");
        let e = err(&GOOD.replace("heartbeat = true", "heartbeat = true\ncolour = 1"));
        assert_eq!(e.field, "definition", "{e}");
        assert!(e.message.starts_with("unknown field; expected one of `name`"), "{e}");
        let e = err(&GOOD.replace("kernel = \"vmlinuz\"", "disk = 3"));
        assert_eq!(e.field, "boot.disk", "{e}");
        let e = err(&GOOD.replace("vcpus = 1", "vcpus = \"two\""));
        assert_eq!(e.field, "vcpus", "{e}");
        let e = VmDefinition::parse(
            r#"{"name": "x", "vcpus": 1, "memory_mib": 64, "boot": {"kernel": 1}}"#,
            DefinitionFormat::Json,
        )
        .unwrap_err();
        assert_eq!(e.field, "boot.kernel", "{e}");
    }

    /// A file that is not a definition, or a field that does not fit, is described by
    /// position and by what the schema expects; nothing of the text is quoted.
    #[test]
    fn errors_never_quote_the_text() {
        let secret = "S3CRET";
        let cases = [
            (
                format!("root:$6${secret}:19000:0:99999:7:::\n"),
                DefinitionFormat::Toml,
                "definition",
                "TOML parse error at line 1",
            ),
            (format!("{{\"password\": \"{secret}\"}}"), DefinitionFormat::Json, "definition", "unknown field"),
            (format!("[db]\n{secret} = 1\n"), DefinitionFormat::Toml, "definition", "unknown field"),
            (
                GOOD.replace("vcpus = 1", &format!("vcpus = \"{secret}\"")),
                DefinitionFormat::Toml,
                "vcpus",
                "wrong type; expected u32",
            ),
            (
                GOOD.replace("[[disks]]", &format!("[[disks]]\nformat = \"{secret}\"")),
                DefinitionFormat::Toml,
                "disks[0].format",
                "unknown variant; expected `raw` or `qcow2`",
            ),
            (
                GOOD.replace("[boot]", &format!("[boot]\n{secret} = 2")),
                DefinitionFormat::Toml,
                "boot",
                "unknown field; expected one of `kernel`",
            ),
            (
                format!("{{\"name\": \"{secret}\", \"vcpus\": \"{secret}\"}}"),
                DefinitionFormat::Json,
                "vcpus",
                "wrong type; expected u32 (line 1",
            ),
            (format!("{{\"name\": \"{secret}"), DefinitionFormat::Json, "definition", "JSON parse error at line 1"),
        ];
        for (text, format, field, needle) in cases {
            let e = VmDefinition::parse(&text, format).unwrap_err();
            assert_eq!(e.field, field, "{e} for {text:?}");
            assert!(e.message.contains(needle), "{e:?} should contain {needle:?}");
            assert!(!e.to_string().contains(secret), "{e} quotes the text");
            let f = VmDefinition::parse_file(
                &text,
                if format == DefinitionFormat::Json { "/etc/x.json" } else { "/etc/x" },
            )
            .unwrap_err();
            assert!(f.message.contains("/etc/x"), "{f}");
            assert!(!f.to_string().contains(secret), "{f} quotes the file");
        }
        let e = VmDefinition::parse_file("root:x:0:0:root:/root:/bin/bash\n", "/etc/passwd").unwrap_err();
        assert!(e.message.starts_with("/etc/passwd is not a VM definition"), "{e}");
        assert!(!e.message.contains("/bin/bash"), "{e}");
    }
}
