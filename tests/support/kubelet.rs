//! A ConfigMap volume as the kubelet writes it (`AtomicWriter` in the kubelet's volume
//! utilities), for tests of the gateway under Kubernetes: the files live in a timestamped
//! directory `..2026_12_07_16_00_01.NNN`, `..data` is a symlink to it, and each key is a
//! symlink `policy.yaml -> ..data/policy.yaml`. An update writes a new timestamped
//! directory, points a new symlink `..data_tmp` at it, renames that over `..data` (the one
//! atomic step) and then deletes the old directory.

use std::path::{Path, PathBuf};

pub struct ConfigMapVolume {
    root: PathBuf,
    current: String,
    generation: u32,
}

impl ConfigMapVolume {
    /// The volume at `root` (an existing, empty directory) with one key, `policy.yaml`.
    pub fn create(root: &Path, policy: &str) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            root: root.to_path_buf(),
            current: String::new(),
            generation: 0,
        };
        let first = volume.write_generation(policy);
        std::os::unix::fs::symlink(&first, root.join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml"))
            .expect("policy.yaml symlink");
        volume.current = first;
        volume
    }

    /// Write `policy` into a new timestamped directory; returns its name.
    fn write_generation(&mut self, policy: &str) -> String {
        self.generation += 1;
        let name = format!(
            "..2026_12_07_16_00_{:02}.{:09}",
            self.generation, 123_456_789
        );
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).expect("timestamped dir");
        std::fs::write(dir.join("policy.yaml"), policy).expect("write policy");
        name
    }

    /// The kubelet's update, step by step.
    pub fn update(&mut self, policy: &str) {
        let next = self.write_generation(policy);
        std::os::unix::fs::symlink(&next, self.root.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).expect("rename");
        std::fs::remove_dir_all(self.root.join(&self.current)).expect("remove old dir");
        self.current = next;
    }

    /// How many timestamped directories are on disk (the kubelet leaves one).
    pub fn generations_on_disk(&self) -> usize {
        std::fs::read_dir(&self.root)
            .expect("read volume")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                name.to_string_lossy().starts_with("..2026")
            })
            .count()
    }
}
