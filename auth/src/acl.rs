//! Topic ACLs: who may do what to which topics. [`Authorizer`] is the seam; [`AclFile`] keeps
//! the rules in a file for a lone agent.
//!
//! Deny by default: a principal may do only what a rule allows. A rule is one line,
//!
//! ```text
//! allow PRINCIPAL OPERATION[,OPERATION…] TOPIC
//! ```
//!
//! `PRINCIPAL` is a name or `*` (any authenticated principal); `OPERATION` one of `produce`,
//! `fetch`, `describe`, `create`, `delete`, `admin` or `all`; `TOPIC` a literal name, a prefix
//! ending in `*` (`orders*` covers `orders` and `orders-eu`, not `order`), or `*`. Blank lines
//! and `#` comments are ignored.
//!
//! ```
//! use streamhouse_auth::{Acls, Authorizer, Operation, Principal};
//!
//! let acls: Acls = "allow payments produce,describe orders*\nallow * describe *".parse().unwrap();
//! let payments = Principal::new("payments");
//! assert!(acls.allowed(&payments, Operation::Produce, "orders-eu"));
//! assert!(!acls.allowed(&payments, Operation::Produce, "order"));
//! assert!(!acls.allowed(&payments, Operation::Fetch, "orders"));
//! assert!(acls.allowed(&Principal::new("search"), Operation::Describe, "anything"));
//! ```

use crate::Principal;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

/// What a request does to a topic (Kafka's ACL operations where one exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Append records (Kafka `Write`).
    Produce,
    /// Read records (Kafka `Read`).
    Fetch,
    /// Learn that the topic exists, its partitions and leaders.
    Describe,
    /// Create the topic (by `topics create` or auto-creation).
    Create,
    /// Delete the topic.
    Delete,
    /// Change the topic's settings (Kafka `Alter`).
    Admin,
}

impl Operation {
    /// Every operation, in the order of the file syntax.
    pub const ALL: [Operation; 6] = [
        Operation::Produce,
        Operation::Fetch,
        Operation::Describe,
        Operation::Create,
        Operation::Delete,
        Operation::Admin,
    ];

    /// Its name in rules, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Produce => "produce",
            Operation::Fetch => "fetch",
            Operation::Describe => "describe",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Admin => "admin",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decides whether a principal may do an operation to a topic.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `principal` may do `operation` to `topic`.
    fn allowed(&self, principal: &Principal, operation: Operation, topic: &str) -> bool;
}

impl<A: Authorizer + ?Sized> Authorizer for Arc<A> {
    fn allowed(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        (**self).allowed(principal, operation, topic)
    }
}

/// Which topics a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Every topic (`*`).
    Any,
    /// Topics starting with this text (`orders*`).
    Prefix(String),
    /// This topic only.
    Literal(String),
}

impl TopicPattern {
    /// Whether the pattern covers `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Any => true,
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            TopicPattern::Literal(name) => topic == name,
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicPattern::Any => f.write_str("*"),
            TopicPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            TopicPattern::Literal(name) => f.write_str(name),
        }
    }
}

/// One `allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The principal's name, or `None` for any authenticated principal (`*`).
    pub principal: Option<String>,
    /// What it allows.
    pub operations: Vec<Operation>,
    /// To which topics.
    pub topics: TopicPattern,
}

impl Rule {
    fn allows(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        self.principal
            .as_deref()
            .is_none_or(|name| name == principal.name())
            && self.operations.contains(&operation)
            && self.topics.matches(topic)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operations = if self.operations.len() == Operation::ALL.len() {
            "all".to_string()
        } else {
            let names: Vec<&str> = self.operations.iter().map(|o| o.name()).collect();
            names.join(",")
        };
        write!(
            f,
            "allow {} {operations} {}",
            self.principal.as_deref().unwrap_or("*"),
            self.topics
        )
    }
}

impl FromStr for Rule {
    type Err = &'static str;

    fn from_str(line: &str) -> Result<Rule, &'static str> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [verb, principal, operations, topics] = words[..] else {
            return Err("expected `allow PRINCIPAL OPERATION[,OPERATION…] TOPIC`");
        };
        if verb != "allow" {
            return Err("rules start with `allow` (everything else is denied)");
        }
        let mut ops = Vec::new();
        for name in operations.split(',') {
            if name == "all" {
                ops.extend(Operation::ALL);
                continue;
            }
            let op = Operation::ALL
                .into_iter()
                .find(|o| o.name() == name)
                .ok_or("operations are produce, fetch, describe, create, delete, admin or all")?;
            ops.push(op);
        }
        ops.sort_by_key(|o| Operation::ALL.iter().position(|x| x == o));
        ops.dedup();
        let topics = match topics {
            "*" => TopicPattern::Any,
            t if t.ends_with('*') => {
                let prefix = &t[..t.len() - 1];
                if prefix.contains('*') {
                    return Err("`*` only at the end of a topic pattern");
                }
                TopicPattern::Prefix(prefix.to_string())
            }
            t if t.contains('*') => return Err("`*` only at the end of a topic pattern"),
            t => TopicPattern::Literal(t.to_string()),
        };
        Ok(Rule {
            principal: (principal != "*").then(|| principal.to_string()),
            operations: ops,
            topics,
        })
    }
}

/// A list of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acls {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

/// A rule that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// The file could not be read or written.
    #[error("ACL file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a rule.
    #[error("ACL line {line}: {why}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl FromStr for Acls {
    type Err = AclError;

    fn from_str(text: &str) -> Result<Acls, AclError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let rule = line
                .parse()
                .map_err(|why| AclError::Syntax { line: i + 1, why })?;
            rules.push(rule);
        }
        Ok(Acls { rules })
    }
}

impl fmt::Display for Acls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rule in &self.rules {
            writeln!(f, "{rule}")?;
        }
        Ok(())
    }
}

impl Authorizer for Acls {
    fn allowed(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.allows(principal, operation, topic))
    }
}

/// ACL rules kept in a file, read at start and again on [`reload`](AclFile::reload).
#[derive(Debug)]
pub struct AclFile {
    path: PathBuf,
    acls: RwLock<Arc<Acls>>,
}

impl AclFile {
    /// Reads the rules at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<AclFile, AclError> {
        let path = path.as_ref().to_path_buf();
        let acls = read(&path)?;
        Ok(AclFile {
            path,
            acls: RwLock::new(Arc::new(acls)),
        })
    }

    /// Reads the file again; on an error the rules held so far stay in force — a file that
    /// is gone too (found by an outside review: a deleted file locked everyone out on SIGHUP).
    pub fn reload(&self) -> Result<usize, AclError> {
        if !self.path.exists() {
            return Err(AclError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "the file is gone"),
            });
        }
        let acls = read(&self.path)?;
        let count = acls.rules.len();
        *self.acls.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(acls);
        Ok(count)
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Acls> {
        self.acls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Authorizer for AclFile {
    fn allowed(&self, principal: &Principal, operation: Operation, topic: &str) -> bool {
        self.acls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .allowed(principal, operation, topic)
    }
}

/// Reads the rules of the file at `path` (an absent file holds none).
pub fn read(path: &Path) -> Result<Acls, AclError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.parse(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Acls::default()),
        Err(source) => Err(AclError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_of_a_deleted_file_keeps_the_rules_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls");
        std::fs::write(&path, "allow p produce t\n").unwrap();
        let file = AclFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let error = file.reload().unwrap_err();
        assert!(error.to_string().contains("gone"), "{error}");
        assert!(file.allowed(&Principal::new("p"), Operation::Produce, "t"));
    }

    #[test]
    fn prefix_edges_follow_the_literal_text() {
        let acls: Acls = "allow p produce orders*\nallow p fetch orders"
            .parse()
            .unwrap();
        let p = Principal::new("p");
        for (topic, produce) in [
            ("orders", true),
            ("orders-eu", true),
            ("ordersX", true),
            ("order", false),
            ("xorders", false),
            ("Orders", false),
        ] {
            assert_eq!(
                acls.allowed(&p, Operation::Produce, topic),
                produce,
                "{topic}"
            );
        }
        assert!(acls.allowed(&p, Operation::Fetch, "orders"));
        assert!(!acls.allowed(&p, Operation::Fetch, "orders-eu"));
        assert!(!acls.allowed(&Principal::new("q"), Operation::Produce, "orders"));
    }

    #[test]
    fn nothing_is_allowed_without_a_rule_and_star_is_any_principal_not_none() {
        let empty = Acls::default();
        for op in Operation::ALL {
            assert!(!empty.allowed(&Principal::new("root"), op, "t"));
        }
        let acls: Acls = "allow * describe,fetch *".parse().unwrap();
        assert!(acls.allowed(&Principal::new("x"), Operation::Fetch, "t"));
        assert!(!acls.allowed(&Principal::new("x"), Operation::Produce, "t"));
    }

    #[test]
    fn rules_print_as_they_parse_and_bad_ones_name_their_line() {
        let text = "allow payments produce,describe orders*\nallow * all *\nallow ops delete t\n";
        let acls: Acls = text.parse().unwrap();
        assert_eq!(acls.to_string(), text);
        assert_eq!(acls.to_string().parse::<Acls>().unwrap(), acls);
        for (bad, line) in [
            ("deny p produce t", 1),
            ("# c\nallow p write t", 2),
            ("allow p produce", 1),
            ("allow p produce o*rders", 1),
            ("allow p produce **", 1),
        ] {
            assert!(
                matches!(bad.parse::<Acls>(), Err(AclError::Syntax { line: l, .. }) if l == line),
                "{bad}"
            );
        }
    }
}
