//! The built-in filesystem server, confined beneath `FILESYSTEM_ROOT`
//! (seed 004 §10).
//!
//! It is disabled by default. It runs only when `filesystem` is listed in
//! `servers.txt` with `"transport": "builtin"` in the registry (so it is
//! subject to `allow_clients` and the tool lists like every server, and
//! `allow_clients: []` keeps it closed) *and* `FILESYSTEM_ROOT` names an
//! existing directory that is not `/`, not a home directory (`/root`,
//! `/home`, `/home/NAME`, `$HOME`) and not an ancestor of `$HOME`. Listed
//! without a usable root, start-up fails with the reason.
//!
//! Every path is resolved beneath the root by `cap-std`, which opens the
//! root once and resolves each request relative to that handle (with
//! `openat2(RESOLVE_BENEATH)` where the kernel has it, else component by
//! component with `O_NOFOLLOW`). Absolute paths, `..` that leaves the root,
//! symlinks that point out (absolute or relative), and a symlink swapped in
//! while a call runs all fail, because no step ever resolves a path from
//! the host's root. A sibling whose name starts with the root's name
//! (`/srv/data2` next to `/srv/data`) is reachable only through `..`, which
//! is refused: there is no string-prefix check to fool.
//!
//! Tools: `read_file`, `write_file`, `list_directory`, `stat`. Refusals are
//! tool errors (`isError: true`) saying the path leaves the root.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cap_std::fs::Dir;
use serde_json::{Value, json};

use crate::seams::BoxFuture;
use crate::upstream::{CallError, ServerHealth, ToolInfo, Upstream};

/// The variable that enables the filesystem server.
pub const FILESYSTEM_ROOT_ENV: &str = "FILESYSTEM_ROOT";
/// The largest file `read_file` returns.
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;
/// The largest content `write_file` accepts.
pub const MAX_WRITE_BYTES: usize = 4 * 1024 * 1024;
/// The most entries `list_directory` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Why `FILESYSTEM_ROOT` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{FILESYSTEM_ROOT_ENV}={root}: {why}; fix: set {FILESYSTEM_ROOT_ENV} to one project directory (not / and not a home directory), or remove 'filesystem' from data/mcp/servers.txt"
)]
pub struct FsRootError {
    /// The configured root.
    pub root: String,
    /// Why it is refused.
    pub why: String,
}

/// Why a canonical root is refused (pure): `/`, a home directory, or an
/// ancestor of one.
pub fn root_refusal(canonical: &Path, home: Option<&Path>) -> Option<&'static str> {
    if canonical.parent().is_none() {
        return Some("it is the filesystem root '/'");
    }
    if canonical == Path::new("/root") || canonical == Path::new("/home") {
        return Some("it is a home directory");
    }
    if canonical.parent() == Some(Path::new("/home")) {
        return Some("it is a home directory (/home/NAME)");
    }
    if let Some(h) = home {
        if canonical == h {
            return Some("it is $HOME");
        }
        if h.starts_with(canonical) {
            return Some("it contains $HOME");
        }
    }
    None
}

/// Resolves and checks the root: it must exist, be a directory and pass
/// [`root_refusal`] after symlinks are resolved.
pub fn check_root(root: &Path, home: Option<&Path>) -> Result<PathBuf, FsRootError> {
    let err = |why: String| FsRootError {
        root: root.display().to_string(),
        why,
    };
    if root.as_os_str().is_empty() {
        return Err(err("it is empty".into()));
    }
    let canonical =
        std::fs::canonicalize(root).map_err(|e| err(format!("cannot resolve it ({e})")))?;
    if !canonical.is_dir() {
        return Err(err("it is not a directory".into()));
    }
    let home = home.and_then(|h| std::fs::canonicalize(h).ok());
    if let Some(why) = root_refusal(&canonical, home.as_deref()) {
        return Err(err(why.into()));
    }
    Ok(canonical)
}

/// The confined filesystem server.
pub struct FsServer {
    root: PathBuf,
    dir: Arc<Dir>,
    tools: Arc<Vec<ToolInfo>>,
}

impl std::fmt::Debug for FsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsServer")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn tool_defs() -> Vec<ToolInfo> {
    let path = json!({"type": "string", "description": "A path relative to the shared directory, e.g. notes/todo.md"});
    let defs = [
        json!({"name": "read_file", "description": "Read a UTF-8 text file of the shared directory.",
               "inputSchema": {"type": "object", "properties": {"path": path}, "required": ["path"]},
               "annotations": {"readOnlyHint": true}}),
        json!({"name": "write_file", "description": "Create or replace a UTF-8 text file in the shared directory (its folder must exist).",
               "inputSchema": {"type": "object", "properties": {"path": path, "content": {"type": "string"}}, "required": ["path", "content"]},
               "annotations": {"readOnlyHint": false, "destructiveHint": true}}),
        json!({"name": "list_directory", "description": "List a directory of the shared directory ('.' is its top).",
               "inputSchema": {"type": "object", "properties": {"path": path}, "required": ["path"]},
               "annotations": {"readOnlyHint": true}}),
        json!({"name": "stat", "description": "Kind, size and modification time of a path in the shared directory.",
               "inputSchema": {"type": "object", "properties": {"path": path}, "required": ["path"]},
               "annotations": {"readOnlyHint": true}}),
    ];
    defs.into_iter()
        .filter_map(|def| {
            let name = def.get("name")?.as_str()?.to_owned();
            Some(ToolInfo::new(name, def))
        })
        .collect()
}

/// A tool error result.
fn tool_error(text: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "isError": true})
}

fn tool_text(text: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "isError": false})
}

fn describe(path: &str, e: &std::io::Error) -> String {
    let p = crate::names::printable(path);
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "refused: '{p}' leads outside the shared directory (absolute paths, '..' above the top and symlinks pointing out are not allowed), or is not readable"
        ),
        std::io::ErrorKind::NotFound => format!("'{p}' does not exist"),
        std::io::ErrorKind::IsADirectory => format!("'{p}' is a directory"),
        std::io::ErrorKind::NotADirectory => format!("a parent of '{p}' is not a directory"),
        _ => match e.raw_os_error() {
            // ELOOP: a symlink loop, or O_NOFOLLOW met a symlink that
            // resolution refused to follow out of the root.
            Some(40) => format!("refused: '{p}' resolves through a symlink that is not allowed"),
            // EXDEV: openat2(RESOLVE_BENEATH) found the path would leave.
            Some(18) => format!("refused: '{p}' leads outside the shared directory"),
            _ => format!("'{p}': {}", e.kind()),
        },
    }
}

fn path_arg<'a>(args: &'a Value, name: &str) -> Result<&'a str, String> {
    let p = args
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("argument '{name}' (a string) is required"))?;
    if p.contains('\0') {
        return Err(format!("argument '{name}' contains a NUL byte"));
    }
    if Path::new(p).is_absolute() {
        return Err(format!(
            "refused: '{}' is absolute; paths are relative to the shared directory",
            crate::names::printable(p)
        ));
    }
    Ok(p)
}

impl FsServer {
    /// Opens the server on `root` (checked with [`check_root`]).
    pub fn open(root: &Path, home: Option<&Path>) -> Result<Self, FsRootError> {
        let canonical = check_root(root, home)?;
        let dir = Dir::open_ambient_dir(&canonical, cap_std::ambient_authority()).map_err(|e| {
            FsRootError {
                root: root.display().to_string(),
                why: format!("cannot open it ({e})"),
            }
        })?;
        Ok(Self {
            root: canonical,
            dir: Arc::new(dir),
            tools: Arc::new(tool_defs()),
        })
    }

    /// The resolved root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs one tool synchronously (blocking IO); the MCP result object.
    pub fn run(&self, tool: &str, args: &Value) -> Value {
        let out = match tool {
            "read_file" => self.read_file(args),
            "write_file" => self.write_file(args),
            "list_directory" => self.list_directory(args),
            "stat" => self.stat(args),
            other => Err(format!("unknown tool '{}'", crate::names::printable(other))),
        };
        match out {
            Ok(v) => v,
            Err(msg) => tool_error(msg),
        }
    }

    fn read_file(&self, args: &Value) -> Result<Value, String> {
        let path = path_arg(args, "path")?;
        let file = self.dir.open(path).map_err(|e| describe(path, &e))?;
        let meta = file.metadata().map_err(|e| describe(path, &e))?;
        if meta.is_dir() {
            return Err(format!(
                "'{}' is a directory; use list_directory",
                crate::names::printable(path)
            ));
        }
        if meta.len() > MAX_READ_BYTES {
            return Err(format!(
                "'{}' is larger than {MAX_READ_BYTES} bytes",
                crate::names::printable(path)
            ));
        }
        let mut data = Vec::new();
        file.into_std()
            .take(MAX_READ_BYTES + 1)
            .read_to_end(&mut data)
            .map_err(|e| describe(path, &e))?;
        if data.len() as u64 > MAX_READ_BYTES {
            return Err(format!(
                "'{}' is larger than {MAX_READ_BYTES} bytes",
                crate::names::printable(path)
            ));
        }
        let text = String::from_utf8(data)
            .map_err(|_| format!("'{}' is not UTF-8 text", crate::names::printable(path)))?;
        Ok(tool_text(text))
    }

    fn write_file(&self, args: &Value) -> Result<Value, String> {
        let path = path_arg(args, "path")?;
        let content = args
            .get("content")
            .and_then(Value::as_str)
            .ok_or("argument 'content' (a string) is required")?;
        if content.len() > MAX_WRITE_BYTES {
            return Err(format!("content is larger than {MAX_WRITE_BYTES} bytes"));
        }
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let mut file = self
            .dir
            .open_with(path, &opts)
            .map_err(|e| describe(path, &e))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| describe(path, &e))?;
        Ok(tool_text(format!(
            "wrote {} bytes to {}",
            content.len(),
            crate::names::printable(path)
        )))
    }

    fn list_directory(&self, args: &Value) -> Result<Value, String> {
        let path = path_arg(args, "path")?;
        let entries = self.dir.read_dir(path).map_err(|e| describe(path, &e))?;
        let mut lines = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| describe(path, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = match entry.file_type() {
                Ok(t) if t.is_dir() => "[DIR]",
                Ok(t) if t.is_symlink() => "[LINK]",
                Ok(_) => "[FILE]",
                Err(_) => "[?]",
            };
            lines.push(format!("{kind} {name}"));
            if lines.len() >= MAX_LIST_ENTRIES {
                lines.push(format!("... (only the first {MAX_LIST_ENTRIES} entries)"));
                break;
            }
        }
        lines.sort();
        Ok(tool_text(lines.join("\n")))
    }

    fn stat(&self, args: &Value) -> Result<Value, String> {
        let path = path_arg(args, "path")?;
        let meta = self
            .dir
            .symlink_metadata(path)
            .map_err(|e| describe(path, &e))?;
        let kind = if meta.is_dir() {
            "directory"
        } else if meta.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.into_std().duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let info = json!({"kind": kind, "size": meta.len(), "modified_unix": modified, "readonly": meta.permissions().readonly()});
        Ok(
            json!({"content": [{"type": "text", "text": info.to_string()}], "structuredContent": info, "isError": false}),
        )
    }
}

impl Upstream for FsServer {
    fn tools(&self) -> BoxFuture<'_, Result<Arc<Vec<ToolInfo>>, CallError>> {
        Box::pin(async move { Ok(self.tools.clone()) })
    }

    fn call<'a>(
        &'a self,
        tool: &'a str,
        arguments: Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(async move {
            let me = Self {
                root: self.root.clone(),
                dir: self.dir.clone(),
                tools: self.tools.clone(),
            };
            let tool = tool.to_owned();
            let work = tokio::task::spawn_blocking(move || me.run(&tool, &arguments));
            match tokio::time::timeout(timeout, work).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(CallError::Unavailable(format!(
                    "the filesystem task failed: {e}"
                ))),
                Err(_) => Err(CallError::Timeout(timeout)),
            }
        })
    }

    fn health(&self) -> ServerHealth {
        ServerHealth::builtin(crate::registry::FILESYSTEM_SERVER, self.tools.len())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn root_refusal_table() {
        let home = Some(Path::new("/home/alice"));
        let cases: &[(&str, Option<&Path>, bool)] = &[
            ("/", home, true),
            ("/root", home, true),
            ("/home", home, true),
            ("/home/alice", home, true),
            ("/home/bob", home, true),
            ("/home/alice/project", home, false),
            ("/srv/data", home, false),
            ("/srv", Some(Path::new("/srv/users/x")), true),
            ("/srv/users/x", Some(Path::new("/srv/users/x")), true),
            ("/srv/data", None, false),
            ("/tmp/x", None, false),
        ];
        for (root, home, refused) in cases {
            assert_eq!(
                root_refusal(Path::new(root), *home).is_some(),
                *refused,
                "{root} {home:?}"
            );
        }
    }

    #[test]
    fn check_root_resolves_symlinks_and_refuses_files() {
        let t = tempfile::tempdir().unwrap();
        let link = t.path().join("to-root");
        symlink("/", &link).unwrap();
        assert!(
            check_root(&link, None)
                .unwrap_err()
                .why
                .contains("filesystem root")
        );
        let file = t.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(
            check_root(&file, None)
                .unwrap_err()
                .why
                .contains("not a directory")
        );
        assert!(check_root(&t.path().join("missing"), None).is_err());
        assert!(check_root(Path::new(""), None).is_err());
        assert!(
            check_root(t.path(), Some(t.path()))
                .unwrap_err()
                .why
                .contains("$HOME")
        );
        assert!(check_root(t.path(), None).is_ok());
        let e = check_root(Path::new("/"), None).unwrap_err().to_string();
        assert!(e.contains("FILESYSTEM_ROOT=/") && e.contains("fix:"), "{e}");
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        srv: FsServer,
        base: PathBuf,
    }

    /// base/data (the root) with a file, a subdirectory and symlinks;
    /// base/data2 (a sibling whose name starts with the root's) and
    /// base/outside.txt hold secrets.
    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("data");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("hello.txt"), "inside").unwrap();
        std::fs::write(root.join("sub/inner.txt"), "inner").unwrap();
        std::fs::create_dir_all(base.join("data2")).unwrap();
        std::fs::write(base.join("data2/secret.txt"), "SECRET-SIBLING").unwrap();
        std::fs::write(base.join("outside.txt"), "SECRET-OUTSIDE").unwrap();
        symlink(base.join("outside.txt"), root.join("abs-link")).unwrap();
        symlink("../outside.txt", root.join("rel-link")).unwrap();
        symlink(base.join("data2"), root.join("dir-link")).unwrap();
        symlink("/etc", root.join("etc-link")).unwrap();
        symlink("sub/inner.txt", root.join("ok-link")).unwrap();
        symlink("loop-b", root.join("loop-a")).unwrap();
        symlink("loop-a", root.join("loop-b")).unwrap();
        let srv = FsServer::open(&root, None).unwrap();
        Fixture {
            _tmp: tmp,
            srv,
            base,
        }
    }

    fn text(v: &Value) -> String {
        v["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn reads_inside_the_root() {
        let f = fixture();
        for (path, want) in [
            ("hello.txt", "inside"),
            ("sub/inner.txt", "inner"),
            ("./sub/../hello.txt", "inside"),
            ("ok-link", "inner"),
        ] {
            let v = f.srv.run("read_file", &json!({"path": path}));
            assert_eq!(v["isError"], false, "{path}: {v}");
            assert_eq!(text(&v), want, "{path}");
        }
        let v = f.srv.run("list_directory", &json!({"path": "."}));
        assert!(text(&v).contains("[FILE] hello.txt"), "{v}");
        assert!(text(&v).contains("[DIR] sub"), "{v}");
        let v = f.srv.run("stat", &json!({"path": "hello.txt"}));
        assert_eq!(v["structuredContent"]["size"], 6, "{v}");
    }

    /// Every escape, for every tool that takes a path: refused, and no
    /// secret content in the answer.
    #[test]
    fn escape_table() {
        let f = fixture();
        let escapes = [
            "../outside.txt",
            "../data2/secret.txt",
            "sub/../../outside.txt",
            "./../outside.txt",
            "sub/../../data2/secret.txt",
            "..",
            "../",
            "../data2",
            "/etc/passwd",
            "/",
            "//etc/passwd",
            "abs-link",
            "rel-link",
            "dir-link/secret.txt",
            "dir-link",
            "etc-link/passwd",
            "etc-link",
            "loop-a",
            "hello.txt\0../outside.txt",
        ];
        let outside = f.base.join("data2");
        let before = std::fs::read_dir(&outside).unwrap().count();
        for path in escapes {
            for (tool, args) in [
                ("read_file", json!({"path": path})),
                ("list_directory", json!({"path": path})),
                ("write_file", json!({"path": path, "content": "pwned"})),
            ] {
                let v = f.srv.run(tool, &args);
                // A directory that exists inside (sub, .) is not an escape,
                // but none of these paths names one.
                assert_eq!(v["isError"], true, "{tool} {path:?} was not refused: {v}");
                let t = text(&v);
                assert!(!t.contains("SECRET"), "{tool} {path:?} leaked: {t}");
            }
        }
        // Nothing was written outside.
        assert_eq!(
            std::fs::read_to_string(f.base.join("outside.txt")).unwrap(),
            "SECRET-OUTSIDE"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), before);
        assert_eq!(
            std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
            "SECRET-SIBLING"
        );
        // Refusals say why.
        let v = f.srv.run("read_file", &json!({"path": "../outside.txt"}));
        assert!(text(&v).contains("outside the shared directory"), "{v}");
        let v = f.srv.run("read_file", &json!({"path": "/etc/passwd"}));
        assert!(text(&v).contains("absolute"), "{v}");
    }

    #[test]
    fn stat_does_not_follow_symlinks_out() {
        let f = fixture();
        // stat describes the link itself (inside the root) without
        // following it; its target's size is not revealed.
        let v = f.srv.run("stat", &json!({"path": "abs-link"}));
        assert_eq!(v["structuredContent"]["kind"], "symlink", "{v}");
        for path in ["../outside.txt", "/etc/passwd", "dir-link/secret.txt"] {
            let v = f.srv.run("stat", &json!({"path": path}));
            assert_eq!(v["isError"], true, "{path}: {v}");
        }
    }

    #[test]
    fn writes_stay_inside() {
        let f = fixture();
        let v = f.srv.run(
            "write_file",
            &json!({"path": "sub/new.txt", "content": "hi"}),
        );
        assert_eq!(v["isError"], false, "{v}");
        assert_eq!(
            std::fs::read_to_string(f.srv.root().join("sub/new.txt")).unwrap(),
            "hi"
        );
        let v = f.srv.run(
            "write_file",
            &json!({"path": "missing/new.txt", "content": "hi"}),
        );
        assert_eq!(v["isError"], true, "{v}");
    }

    /// A directory inside the root is swapped for a symlink to a directory
    /// outside while reads run; no read may ever return outside content.
    #[test]
    fn symlink_swapped_in_during_calls_never_escapes() {
        let f = fixture();
        let root = f.srv.root().to_path_buf();
        let outside_dir = f.base.join("data2");
        std::fs::write(root.join("sub/secret.txt"), "inside-secret").unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            let root = root.clone();
            std::thread::spawn(move || {
                let sub = root.join("sub");
                let parked = root.join("sub-parked");
                let link = root.join("sub-link");
                symlink(&outside_dir, &link).unwrap();
                let mut swaps = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // sub is the real directory → park it, put the link in.
                    let _ = std::fs::rename(&sub, &parked);
                    let _ = std::fs::rename(&link, &sub);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    // And back.
                    let _ = std::fs::rename(&sub, &link);
                    let _ = std::fs::rename(&parked, &sub);
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    swaps += 1;
                }
                swaps
            })
        };
        let mut inside = 0;
        for _ in 0..3000 {
            let v = f.srv.run("read_file", &json!({"path": "sub/secret.txt"}));
            let t = text(&v);
            assert!(
                !t.contains("SECRET-SIBLING"),
                "escaped through a swapped symlink: {t}"
            );
            if v["isError"] == false {
                assert_eq!(t, "inside-secret");
                inside += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0, "the swapper never ran");
        assert!(
            inside > 0,
            "no read succeeded while the directory was in place"
        );
    }

    #[test]
    fn bad_arguments_are_tool_errors() {
        let f = fixture();
        for (tool, args) in [
            ("read_file", json!({})),
            ("read_file", json!({"path": 7})),
            ("write_file", json!({"path": "x.txt"})),
            ("nope", json!({"path": "x"})),
        ] {
            assert_eq!(f.srv.run(tool, &args)["isError"], true, "{tool} {args}");
        }
    }
}
