//! Python source from component specs.

use serde_json::Value;

use super::{CodegenError, Field, FunctionDef, Spec};

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

pub(super) fn check_identifier(what: &str, name: &str) -> Result<(), CodegenError> {
    if crate::spec::is_identifier(name) && !KEYWORDS.contains(&name) {
        Ok(())
    } else {
        Err(CodegenError::Spec(format!(
            "{what} {name:?} is not a valid Python identifier"
        )))
    }
}

fn py_type(t: Option<&str>) -> String {
    match t.unwrap_or("Any") {
        "str" | "string" => "str".into(),
        "int" | "integer" => "int".into(),
        "float" | "number" => "float".into(),
        "bool" | "boolean" => "bool".into(),
        "list" | "array" => "list".into(),
        "dict" | "object" => "dict".into(),
        other
            if other
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "[]_, .".contains(c)) =>
        {
            other.to_owned()
        }
        _ => "Any".into(),
    }
}

/// A Python literal for a JSON default.
fn literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => v.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn docstring(doc: &str, indent: &str) -> String {
    let doc = doc.trim().replace("\"\"\"", "'''").replace('\\', "\\\\");
    format!("{indent}\"\"\"{doc}\"\"\"\n")
}

fn indent_body(body: &str, indent: &str) -> String {
    body.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{indent}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn function(f: &FunctionDef, indent: &str, method: bool) -> Result<String, CodegenError> {
    check_identifier("function", &f.name)?;
    let mut params: Vec<String> = if method {
        vec!["self".into()]
    } else {
        Vec::new()
    };
    let mut seen_default = false;
    for a in &f.args {
        check_identifier("argument", &a.name)?;
        let mut p = format!("{}: {}", a.name, py_type(a.r#type.as_deref()));
        if let Some(d) = &a.default {
            p.push_str(&format!(" = {}", literal(d)));
            seen_default = true;
        } else if seen_default {
            return Err(CodegenError::Spec(format!(
                "argument {:?} of {:?} has no default but follows one that does",
                a.name, f.name
            )));
        }
        params.push(p);
    }
    let mut out = format!(
        "{indent}def {}({}) -> {}:\n",
        f.name,
        params.join(", "),
        py_type(f.returns.as_deref())
    );
    let inner = format!("{indent}    ");
    out.push_str(&docstring(
        f.doc
            .as_deref()
            .unwrap_or("Generated from the component spec."),
        &inner,
    ));
    match &f.body {
        Some(body) => out.push_str(&indent_body(body, &inner)),
        None => out.push_str(&format!(
            "{inner}raise NotImplementedError(\"{}: the spec gives no body\")\n",
            f.name
        )),
    }
    Ok(out)
}

fn class(
    name: &str,
    doc: Option<&str>,
    fields: &[Field],
    methods: &[FunctionDef],
) -> Result<String, CodegenError> {
    check_identifier("class", name)?;
    let mut out = format!("@dataclass\nclass {name}:\n");
    out.push_str(&docstring(
        doc.unwrap_or("Generated from the component spec."),
        "    ",
    ));
    // Fields without defaults first, as dataclasses require.
    let (required, optional): (Vec<&Field>, Vec<&Field>) =
        fields.iter().partition(|f| f.default.is_none());
    for f in required.iter().chain(optional.iter()) {
        check_identifier("field", &f.name)?;
        let ty = py_type(f.r#type.as_deref());
        match &f.default {
            None => out.push_str(&format!("    {}: {ty}\n", f.name)),
            Some(d @ (Value::Array(_) | Value::Object(_))) => out.push_str(&format!(
                "    {}: {ty} = field(default_factory=lambda: {})\n",
                f.name,
                literal(d)
            )),
            Some(d) => out.push_str(&format!("    {}: {ty} = {}\n", f.name, literal(d))),
        }
    }
    out.push_str(&format!(
        r#"
    def to_dict(self) -> dict:
        """The fields as a plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "{name}":
        """An instance from a dict; unknown keys are ignored."""
        known = {{f.name for f in fields(cls)}}
        return cls(**{{k: v for k, v in data.items() if k in known}})
"#
    ));
    for m in methods {
        out.push('\n');
        out.push_str(&function(m, "    ", true)?);
    }
    Ok(out)
}

const HEADER: &str = "from __future__ import annotations\n\nfrom dataclasses import asdict, dataclass, field, fields\nfrom typing import Any\n";

/// Generates a module for one component; returns the source and its exports.
pub(super) fn generate(
    component: &str,
    spec: &Spec,
) -> Result<(String, Vec<String>), CodegenError> {
    let mut out = docstring(
        spec.doc.as_deref().unwrap_or(&format!(
            "The `{component}` component, generated by modal-agents."
        )),
        "",
    );
    out.push('\n');
    out.push_str(HEADER);
    let mut exports = Vec::new();
    match spec.kind {
        super::ComponentKind::Class => {
            out.push_str("\n\n");
            out.push_str(&class(
                component,
                spec.doc.as_deref(),
                &spec.fields,
                &spec.methods,
            )?);
            exports.push(component.to_owned());
        }
        super::ComponentKind::Function => {
            let f = FunctionDef {
                name: component.to_owned(),
                args: spec.args.clone(),
                returns: spec.returns.clone(),
                doc: spec.doc.clone(),
                body: spec.body.clone(),
            };
            out.push_str("\n\n");
            out.push_str(&function(&f, "", false)?);
            exports.push(component.to_owned());
        }
        super::ComponentKind::Module => {
            for (name, value) in &spec.constants {
                check_identifier("constant", name)?;
                out.push_str(&format!("\n{name} = {}\n", literal(value)));
                exports.push(name.clone());
            }
            for f in &spec.functions {
                out.push_str("\n\n");
                out.push_str(&function(f, "", false)?);
                exports.push(f.name.clone());
            }
            for c in &spec.classes {
                out.push_str("\n\n");
                out.push_str(&class(&c.name, c.doc.as_deref(), &c.fields, &c.methods)?);
                exports.push(c.name.clone());
            }
        }
    }
    out.push_str(&format!("\n\n__all__ = {exports:?}\n"));
    Ok((out, exports))
}

/// The package `__init__.py` that re-exports every component.
pub(super) fn package_init(package: &str, modules: &[(String, Vec<String>)]) -> String {
    let mut out = docstring(
        &format!("The `{package}` package, generated by modal-agents."),
        "",
    );
    out.push('\n');
    let mut all = Vec::new();
    for (module, exports) in modules {
        if !exports.is_empty() {
            out.push_str(&format!("from .{module} import {}\n", exports.join(", ")));
            all.extend(exports.iter().cloned());
        }
    }
    out.push_str(&format!("\n__all__ = {all:?}\n"));
    out
}
