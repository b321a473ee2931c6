//! `type = "rust"` processes: cargo builds them, and cargo's own metadata says where the
//! binary lands (workspaces, `[[bin]]` targets and custom target directories included).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::process::{ProcessSpec, Variant};

#[derive(Deserialize)]
struct Metadata {
    target_directory: PathBuf,
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
    default_run: Option<String>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The binary a project in `dir` builds: (target directory, binary name).
pub async fn locate_binary(dir: &Path) -> Result<(PathBuf, String), String> {
    let out = tokio::process::Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run `cargo metadata` in {}: {e} (is cargo installed?)",
                dir.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "`cargo metadata` failed in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let meta: Metadata = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cannot read `cargo metadata` output: {e}"))?;
    pick_binary(meta, dir)
}

fn pick_binary(meta: Metadata, dir: &Path) -> Result<(PathBuf, String), String> {
    // The package whose manifest is in `dir`, else the only package with a binary.
    let with_bins: Vec<&Package> = meta
        .packages
        .iter()
        .filter(|p| p.targets.iter().any(|t| t.kind.iter().any(|k| k == "bin")))
        .collect();
    let pkg = with_bins
        .iter()
        .find(|p| p.manifest_path.parent() == Some(dir))
        .or_else(|| (with_bins.len() == 1).then(|| &with_bins[0]))
        .ok_or_else(|| {
            format!(
                "no single binary package in {}: found {}; set `cwd` to the package's directory",
                dir.display(),
                if with_bins.is_empty() {
                    "none".to_owned()
                } else {
                    with_bins
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })?;
    let bins: Vec<&str> = pkg
        .targets
        .iter()
        .filter(|t| t.kind.iter().any(|k| k == "bin"))
        .map(|t| t.name.as_str())
        .collect();
    let bin = pkg
        .default_run
        .as_deref()
        .or_else(|| bins.iter().copied().find(|b| *b == pkg.name))
        .or_else(|| (bins.len() == 1).then(|| bins[0]))
        .ok_or_else(|| {
            format!(
                "package `{}` has several binaries ({}); set `default-run` in its Cargo.toml",
                pkg.name,
                bins.join(", ")
            )
        })?;
    Ok((meta.target_directory, bin.to_owned()))
}

/// Turn a configured rust process (`argv` holds only its `args`) into one that cargo
/// builds: `cargo build` and the debug binary in dev mode, `--release` in release mode.
pub fn rust_spec(mut spec: ProcessSpec, target_dir: &Path, bin: &str) -> ProcessSpec {
    let exe = |profile: &str| target_dir.join(profile).join(bin).display().to_string();
    let args = spec.argv.clone();
    let with = |exe: String| std::iter::once(exe).chain(args.iter().cloned()).collect();
    let build = |release: bool| {
        let mut b: Vec<String> = vec!["cargo".into(), "build".into()];
        if release {
            b.push("--release".into());
        }
        b.extend(["--bin".into(), bin.to_owned()]);
        b
    };
    spec.argv = with(exe("debug"));
    spec.build = Some(build(false));
    spec.release = Some(Variant {
        argv: with(exe("release")),
        build: Some(build(true)),
    });
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Metadata {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn picks_the_package_in_dir_and_its_default_binary() {
        let json = r#"{"target_directory":"/w/target","packages":[
            {"name":"lib","manifest_path":"/w/lib/Cargo.toml","default_run":null,"targets":[{"name":"lib","kind":["lib"]}]},
            {"name":"api","manifest_path":"/w/api/Cargo.toml","default_run":null,"targets":[{"name":"api","kind":["bin"]},{"name":"tool","kind":["bin"]}]},
            {"name":"web","manifest_path":"/w/web/Cargo.toml","default_run":"serve","targets":[{"name":"serve","kind":["bin"]},{"name":"x","kind":["bin"]}]}]}"#;
        let (t, b) = pick_binary(meta(json), Path::new("/w/api")).unwrap();
        assert_eq!((t, b.as_str()), (PathBuf::from("/w/target"), "api"));
        let (_, b) = pick_binary(meta(json), Path::new("/w/web")).unwrap();
        assert_eq!(b, "serve");
        let m = meta(
            r#"{"target_directory":"/t","packages":[{"name":"a","manifest_path":"/a/Cargo.toml","default_run":null,"targets":[{"name":"x","kind":["bin"]},{"name":"y","kind":["bin"]}]}]}"#,
        );
        let err = pick_binary(m, Path::new("/a")).unwrap_err();
        assert!(err.contains("default-run"), "{err}");
    }
}
