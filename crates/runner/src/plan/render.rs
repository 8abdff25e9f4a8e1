//! The plan as a picture: Graphviz dot, Mermaid, or indented text by depth.

use std::fmt::Write;

use super::graph::Plan;

/// Output format of `sbxrun graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Instances grouped by depth, each with what it needs.
    #[default]
    Text,
    /// Graphviz.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

impl Plan {
    /// Renders the DAG.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Dot => self.render_dot(),
            Format::Mermaid => self.render_mermaid(),
        }
    }

    fn render_text(&self) -> String {
        let depths = self.depths();
        let levels = depths.iter().max().map_or(0, |d| d + 1);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "job {}: {} instance{}, {} level{}",
            self.name(),
            self.len(),
            plural(self.len()),
            levels,
            plural(levels)
        );
        for level in 0..levels {
            let _ = writeln!(out, "level {level}:");
            for &id in self.topological_order() {
                if depths[id.0] != level {
                    continue;
                }
                let inst = self.instance(id);
                let _ = write!(out, "  {}", inst.name);
                if !inst.deps.is_empty() {
                    let deps: Vec<&str> = inst
                        .deps
                        .iter()
                        .map(|d| self.instance(*d).name.as_str())
                        .collect();
                    let _ = write!(out, "  <- {}", deps.join(", "));
                }
                out.push('\n');
            }
        }
        out
    }

    fn render_dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", dot_quote(self.name()));
        out.push_str("  rankdir=LR;\n  node [shape=box];\n");
        for inst in self.instances() {
            let _ = writeln!(out, "  {};", dot_quote(&inst.name));
        }
        for inst in self.instances() {
            for d in &inst.deps {
                let _ = writeln!(
                    out,
                    "  {} -> {};",
                    dot_quote(&self.instance(*d).name),
                    dot_quote(&inst.name)
                );
            }
        }
        out.push_str("}\n");
        out
    }

    fn render_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for (i, inst) in self.instances().iter().enumerate() {
            let _ = writeln!(out, "  n{i}[\"{}\"]", mermaid_escape(&inst.name));
        }
        for (i, inst) in self.instances().iter().enumerate() {
            for d in &inst.deps {
                let _ = writeln!(out, "  n{} --> n{i}", d.0);
            }
        }
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}
