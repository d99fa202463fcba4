//! Editing `.env` files in place: set one variable, keep every other line
//! (comments, order, unknown variables) as it was, and write atomically with
//! mode 0600 so a crash never leaves a half-written file of secrets.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// A `.env` file held as lines.
pub struct EnvFile {
    path: PathBuf,
    lines: Vec<String>,
}

impl EnvFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let lines = match std::fs::read_to_string(path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            lines,
        })
    }

    /// The value of `name`, unquoted, if the file sets it.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lines.iter().rev().find_map(|l| {
            let (k, v) = split(l)?;
            (k == name).then(|| unquote(v).to_owned())
        })
    }

    /// Sets `name`, replacing its last assignment or appending one.
    pub fn set(&mut self, name: &str, value: &str) {
        let line = format!("{name}={value}");
        match self
            .lines
            .iter()
            .rposition(|l| split(l).is_some_and(|(k, _)| k == name))
        {
            Some(i) => self.lines[i] = line,
            None => self.lines.push(line),
        }
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("aibox-tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut text = self.lines.join("\n");
        text.push('\n');
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot replace {}", self.path.display()))?;
        Ok(())
    }
}

fn split(line: &str) -> Option<(&str, &str)> {
    let l = line.trim_start();
    if l.starts_with('#') {
        return None;
    }
    let l = l.strip_prefix("export ").unwrap_or(l);
    let (k, v) = l.split_once('=')?;
    Some((k.trim(), v.trim()))
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn set_keeps_other_lines_and_writes_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".env");
        std::fs::write(&p, "# comment\nA=1\nexport B=\"two\"\nC=3\n").unwrap();
        let mut f = EnvFile::load(&p).unwrap();
        assert_eq!(f.get("B").as_deref(), Some("two"));
        f.set("B", "changed");
        f.set("D", "new");
        f.save().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, "# comment\nA=1\nB=changed\nC=3\nD=new\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
