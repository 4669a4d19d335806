//! Module profiles (`kernel-config/profiles/*.modules`): which drivers an
//! image ships. One module name per line, `#` comments, `@include NAME` to
//! build on another profile. The profiles are compiled into the binary so
//! an installed `bootvault` needs no source tree; `--profile-file` reads
//! one from disk.

use anyhow::{bail, Context, Result};

/// The built-in profiles, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("qemu", include_str!("../../kernel-config/profiles/qemu.modules")),
    ("pc", include_str!("../../kernel-config/profiles/pc.modules")),
    ("local", include_str!("../../kernel-config/profiles/local.modules")),
];

pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Module names of a profile text, includes resolved against the built-in
/// profiles, duplicates removed, order kept.
pub fn resolve(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    resolve_into(text, &mut out, &mut Vec::new())?;
    Ok(out)
}

fn resolve_into(text: &str, out: &mut Vec<String>, stack: &mut Vec<String>) -> Result<()> {
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("@include") {
            let name = name.trim();
            if stack.iter().any(|s| s == name) {
                bail!("profile line {}: @include {name} loops", n + 1);
            }
            let inc = builtin(name).with_context(|| format!("profile line {}: no built-in profile {name:?}", n + 1))?;
            stack.push(name.to_owned());
            resolve_into(inc, out, stack)?;
            stack.pop();
            continue;
        }
        if line.contains(char::is_whitespace) || line.contains('/') {
            bail!("profile line {}: expected one module name, got {line:?}", n + 1);
        }
        let name = bootvault_common::modules::normalize(line);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_resolve() {
        let qemu = resolve(builtin("qemu").expect("qemu")).expect("resolves");
        assert!(qemu.contains(&"virtio_net".to_string()));
        let pc = resolve(builtin("pc").expect("pc")).expect("resolves");
        assert!(pc.len() > qemu.len());
        assert!(pc.contains(&"via_rhine".to_string()), "dashes normalized");
        // qemu's modules come first, once.
        assert_eq!(&pc[..qemu.len()], &qemu[..]);
        assert_eq!(pc.iter().filter(|m| *m == "e1000").count(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(resolve("a\nb c\n").unwrap_err().to_string().contains("line 2"));
        assert!(resolve("@include nosuch").unwrap_err().to_string().contains("nosuch"));
        assert!(resolve("x/y.ko").is_err());
    }
}
