//! A file system mounted for one test (tmpfs, or a loop-mounted ext4 image that can be
//! frozen), shared by the storage tests of `pylon-node` and `pylon`. Needs root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file system mounted for one test; unfrozen and unmounted on drop.
pub(crate) struct Mount {
    dir: PathBuf,
    _parent: tempfile::TempDir,
    _image: Option<tempfile::NamedTempFile>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "8m").
    pub(crate) fn tmpfs(size: &str) -> Mount {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let opts = format!("size={size}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &opts, "tmpfs", dir.to_str().unwrap()],
        );
        Mount {
            dir,
            _parent: parent,
            _image: None,
        }
    }

    /// A loop-mounted ext4 image (freezable, unlike tmpfs).
    pub(crate) fn ext4(size_mib: u64) -> Mount {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(size_mib << 20).unwrap();
        let img = image.path().to_str().unwrap();
        run("mkfs.ext4", &["-q", "-F", img]);
        run("mount", &["-o", "loop", img, dir.to_str().unwrap()]);
        Mount {
            dir,
            _parent: parent,
            _image: Some(image),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn freeze(&self) {
        run("fsfreeze", &["-f", self.dir.to_str().unwrap()]);
    }

    pub(crate) fn thaw(&self) {
        let _ = Command::new("fsfreeze")
            .args(["-u", self.dir.to_str().unwrap()])
            .output();
    }

    /// Fills the file system with one file until it refuses more; returns the file.
    pub(crate) fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount")
            .args(["-l", self.dir.to_str().unwrap()])
            .output();
    }
}
