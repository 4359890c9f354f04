//! Rust source from component specs, checked by parsing with `syn`.

use serde_json::Value;

use super::{CodegenError, Field, FunctionDef, Spec};

fn check_identifier(what: &str, name: &str) -> Result<(), CodegenError> {
    if crate::spec::is_identifier(name) && syn::parse_str::<syn::Ident>(name).is_ok() {
        Ok(())
    } else {
        Err(CodegenError::Spec(format!(
            "{what} {name:?} is not a valid Rust identifier"
        )))
    }
}

fn rust_type(t: Option<&str>) -> String {
    match t.unwrap_or("Value") {
        "str" | "string" => "String".into(),
        "int" | "integer" => "i64".into(),
        "float" | "number" => "f64".into(),
        "bool" | "boolean" => "bool".into(),
        "list" | "array" => "Vec<String>".into(),
        "dict" | "object" => "std::collections::BTreeMap<String, String>".into(),
        other if syn::parse_str::<syn::Type>(other).is_ok() => other.to_owned(),
        _ => "String".into(),
    }
}

fn doc_comment(doc: &str, indent: &str, inner: bool) -> String {
    let marker = if inner { "//!" } else { "///" };
    doc.trim()
        .lines()
        .map(|l| format!("{indent}{marker} {l}\n"))
        .collect()
}

fn function(f: &FunctionDef, indent: &str, method: bool) -> Result<String, CodegenError> {
    check_identifier("function", &f.name)?;
    let mut params: Vec<String> = if method {
        vec!["&self".into()]
    } else {
        Vec::new()
    };
    for a in &f.args {
        check_identifier("argument", &a.name)?;
        params.push(format!("{}: {}", a.name, rust_type(a.r#type.as_deref())));
    }
    let ret = f
        .returns
        .as_deref()
        .map(|r| format!(" -> {}", rust_type(Some(r))))
        .unwrap_or_default();
    let mut out = doc_comment(
        f.doc
            .as_deref()
            .unwrap_or("Generated from the component spec."),
        indent,
        false,
    );
    out.push_str(&format!(
        "{indent}pub fn {}({}){ret} {{\n",
        f.name,
        params.join(", ")
    ));
    let inner = format!("{indent}    ");
    match &f.body {
        Some(body) => {
            for line in body.lines() {
                out.push_str(&format!("{inner}{line}\n"));
            }
        }
        None => out.push_str(&format!(
            "{inner}panic!(\"{}: the spec gives no body\")\n",
            f.name
        )),
    }
    out.push_str(&format!("{indent}}}\n"));
    Ok(out)
}

fn strukt(
    name: &str,
    doc: Option<&str>,
    fields: &[Field],
    methods: &[FunctionDef],
) -> Result<String, CodegenError> {
    check_identifier("struct", name)?;
    let mut out = doc_comment(
        doc.unwrap_or("Generated from the component spec."),
        "",
        false,
    );
    out.push_str(&format!(
        "#[derive(Debug, Clone, PartialEq, Default)]\npub struct {name} {{\n"
    ));
    for f in fields {
        check_identifier("field", &f.name)?;
        out.push_str(&doc_comment(
            f.doc.as_deref().unwrap_or(&f.name),
            "    ",
            false,
        ));
        out.push_str(&format!(
            "    pub {}: {},\n",
            f.name,
            rust_type(f.r#type.as_deref())
        ));
    }
    out.push_str("}\n\n");
    out.push_str(&format!("impl {name} {{\n"));
    let args: Vec<String> = fields
        .iter()
        .map(|f| format!("{}: {}", f.name, rust_type(f.r#type.as_deref())))
        .collect();
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    out.push_str(&format!(
        "    /// A new `{name}` from all of its fields.\n    pub fn new({}) -> Self {{\n        Self {{ {} }}\n    }}\n",
        args.join(", "),
        names.join(", ")
    ));
    for m in methods {
        out.push('\n');
        out.push_str(&function(m, "    ", true)?);
    }
    out.push_str("}\n");
    Ok(out)
}

fn constant(name: &str, value: &Value) -> Result<String, CodegenError> {
    let (ty, lit) = match value {
        Value::Bool(b) => ("bool", b.to_string()),
        Value::Number(n) if n.is_i64() => ("i64", n.to_string()),
        Value::Number(n) => ("f64", format!("{:?}", n.as_f64().unwrap_or(0.0))),
        Value::String(s) => ("&str", Value::from(s.as_str()).to_string()),
        other => {
            return Err(CodegenError::Spec(format!(
                "constant {name:?}: only booleans, numbers and strings become Rust constants, got {other}"
            )))
        }
    };
    if syn::parse_str::<syn::Ident>(name).is_err() {
        return Err(CodegenError::Spec(format!(
            "constant {name:?} is not a valid Rust identifier"
        )));
    }
    Ok(format!(
        "/// `{name}` from the spec.\npub const {name}: {ty} = {lit};\n"
    ))
}

/// Generates a module for one component; returns the source and its exports.
pub(super) fn generate(
    component: &str,
    spec: &Spec,
) -> Result<(String, Vec<String>), CodegenError> {
    let mut out = doc_comment(
        spec.doc.as_deref().unwrap_or(&format!(
            "The `{component}` component, generated by modal-agents."
        )),
        "",
        true,
    );
    out.push('\n');
    let mut exports = Vec::new();
    match spec.kind {
        super::ComponentKind::Class => {
            out.push_str(&strukt(
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
            out.push_str(&function(&f, "", false)?);
            exports.push(component.to_owned());
        }
        super::ComponentKind::Module => {
            for (name, value) in &spec.constants {
                out.push_str(&constant(name, value)?);
                exports.push(name.clone());
            }
            for f in &spec.functions {
                out.push('\n');
                out.push_str(&function(f, "", false)?);
                exports.push(f.name.clone());
            }
            for c in &spec.classes {
                out.push('\n');
                out.push_str(&strukt(&c.name, c.doc.as_deref(), &c.fields, &c.methods)?);
                exports.push(c.name.clone());
            }
        }
    }
    if out.contains("Value") {
        out = out.replacen("\n\n", "\n\nuse serde_json::Value;\n\n", 1);
    }
    Ok((out, exports))
}

/// Parses Rust source; the error names line and column.
pub(super) fn check(source: &str) -> Result<(), CodegenError> {
    syn::parse_file(source).map(drop).map_err(|e| {
        let start = e.span().start();
        CodegenError::Rejected(format!(
            "Rust parse error at line {}, column {}: {e}",
            start.line,
            start.column + 1
        ))
    })
}

/// The crate root that declares every component module.
pub(super) fn crate_root(package: &str, modules: &[(String, Vec<String>)]) -> String {
    let mut out = format!("//! The `{package}` crate, generated by modal-agents.\n\n");
    for (module, exports) in modules {
        out.push_str(&format!("pub mod {module};\n"));
        if !exports.is_empty() {
            out.push_str(&format!("pub use {module}::{{{}}};\n", exports.join(", ")));
        }
    }
    out
}
