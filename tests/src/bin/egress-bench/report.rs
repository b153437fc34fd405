//! The bench's output: tables of figures, the command behind each row, and the targets.

/// One table: a title, column headings, rows; each row has the command that measured it.
struct Table {
    title: String,
    head: Vec<String>,
    rows: Vec<(Vec<String>, String)>,
    notes: Vec<String>,
}

pub struct Target {
    pub name: String,
    pub met: bool,
    pub figure: String,
}

pub struct Report {
    invocation: String,
    tables: Vec<Table>,
    targets: Vec<Target>,
}

impl Report {
    pub fn new(invocation: String) -> Self {
        Self {
            invocation,
            tables: Vec::new(),
            targets: Vec::new(),
        }
    }

    pub fn table(&mut self, title: &str, head: &[&str]) {
        self.tables.push(Table {
            title: title.to_owned(),
            head: head.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        });
    }

    /// A row of the last table, and the command behind it.
    pub fn row(&mut self, cells: Vec<String>, command: String) {
        self.tables
            .last_mut()
            .expect("a table first")
            .rows
            .push((cells, command));
    }

    /// A line printed under the last table.
    pub fn note(&mut self, note: String) {
        self.tables
            .last_mut()
            .expect("a table first")
            .notes
            .push(note);
    }

    pub fn target(&mut self, name: &str, met: bool, figure: String) {
        eprintln!(
            "bench: target {name}: {} ({figure})",
            if met { "MET" } else { "MISSED" }
        );
        self.targets.push(Target {
            name: name.to_owned(),
            met,
            figure,
        });
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }

    pub fn render(&self) -> String {
        let mut out = format!("# {}\n", self.invocation);
        for t in &self.tables {
            out.push_str(&format!("\n## {}\n\n", t.title));
            let cols = t.head.len() + 1;
            let mut widths = vec![0usize; cols];
            let label = |i: usize| format!("[{}]", i + 1);
            let all: Vec<Vec<String>> = std::iter::once(
                std::iter::once("cmd".to_owned())
                    .chain(t.head.iter().cloned())
                    .collect(),
            )
            .chain(t.rows.iter().enumerate().map(|(i, (cells, _))| {
                std::iter::once(label(i))
                    .chain(cells.iter().cloned())
                    .collect()
            }))
            .collect();
            for r in &all {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for (n, r) in all.iter().enumerate() {
                let line: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i <= 1 {
                            format!("{c:<w$}")
                        } else {
                            format!("{c:>w$}")
                        }
                    })
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
                if n == 0 {
                    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                    out.push_str(&rule.join("  "));
                    out.push('\n');
                }
            }
            for n in &t.notes {
                out.push_str(&format!("{n}\n"));
            }
            out.push_str("\ncommands:\n");
            for (i, (_, cmd)) in t.rows.iter().enumerate() {
                out.push_str(&format!("  {} {cmd}\n", label(i)));
            }
        }
        out.push_str("\n## Targets (issue 7)\n\n");
        for t in &self.targets {
            out.push_str(&format!(
                "{:<7} {} — {}\n",
                if t.met { "MET" } else { "MISSED" },
                t.name,
                t.figure
            ));
        }
        out
    }
}
