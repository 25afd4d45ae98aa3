//! Schema text: `.proto` (proto3) and `.thrift` emitted from [`Schema`](crate::schema::Schema)
//! types and `#[service]` traits, so stock protobuf and Thrift peers can be generated from them.

use std::collections::HashSet;
use std::fmt::Write;

/// How a field's type is spelled in each IDL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeRef {
    proto: String,
    thrift: String,
    shape: Shape,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Plain,
    Unit,
    Result(Box<TypeRef>, Box<TypeRef>),
}

impl TypeRef {
    /// A built-in type: its protobuf and Thrift names.
    pub fn scalar(proto: &str, thrift: &str) -> TypeRef {
        TypeRef { proto: proto.to_owned(), thrift: thrift.to_owned(), shape: Shape::Plain }
    }

    /// A message, enum or union defined in the same file.
    pub fn named(name: &str) -> TypeRef {
        TypeRef::scalar(name, name)
    }

    /// A list of `inner`.
    pub fn list(inner: TypeRef) -> TypeRef {
        TypeRef::plain(format!("repeated {}", inner.proto), format!("list<{}>", inner.thrift))
    }

    /// An optional `inner`.
    pub fn optional(inner: TypeRef) -> TypeRef {
        TypeRef::plain(format!("optional {}", inner.proto), format!("optional {}", inner.thrift))
    }

    /// A map from `key` to `value`.
    pub fn map(key: TypeRef, value: TypeRef) -> TypeRef {
        TypeRef::plain(format!("map<{}, {}>", key.proto, value.proto), format!("map<{}, {}>", key.thrift, value.thrift))
    }

    /// `()`: no field in protobuf, `void` as a Thrift result.
    pub fn unit() -> TypeRef {
        TypeRef { proto: String::new(), thrift: "void".to_owned(), shape: Shape::Unit }
    }

    /// `Result<T, E>`: a method result with a declared error.
    pub fn result(ok: TypeRef, err: TypeRef) -> TypeRef {
        TypeRef { proto: String::new(), thrift: String::new(), shape: Shape::Result(Box::new(ok), Box::new(err)) }
    }

    fn plain(proto: String, thrift: String) -> TypeRef {
        TypeRef { proto, thrift, shape: Shape::Plain }
    }
}

/// One field of a message: its name, number and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// The field's name.
    pub name: String,
    /// The protobuf field number and Thrift field id.
    pub tag: u32,
    /// The field's type.
    pub ty: TypeRef,
}

impl FieldDef {
    /// A field.
    pub fn new(name: &str, tag: u32, ty: TypeRef) -> FieldDef {
        FieldDef { name: name.to_owned(), tag, ty }
    }
}

/// One method of a service.
#[derive(Clone, Debug)]
pub struct MethodDef {
    /// The method's name.
    pub name: String,
    /// Its doc comment.
    pub doc: String,
    /// Arguments, numbered from 1.
    pub args: Vec<(String, TypeRef)>,
    /// The return type, `Result<T, E>` for a declared error.
    pub returns: TypeRef,
    /// The method gets no reply.
    pub oneway: bool,
    /// The item type, for a method that takes a stream of items (and no other arguments).
    pub request_stream: Option<TypeRef>,
    /// The method returns a stream of items of type `returns`.
    pub reply_stream: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    Struct(Vec<FieldDef>),
    Union(Vec<FieldDef>),
    Enum(Vec<(String, i32)>),
    /// A Thrift-only exception wrapping an error type that is not a struct.
    Exception(FieldDef),
}

#[derive(Clone, Debug)]
struct Def {
    name: String,
    doc: String,
    kind: Kind,
}

/// A schema being collected: messages, enums and services, in dependency order.
#[derive(Clone, Debug)]
pub struct Idl {
    package: String,
    defs: Vec<Def>,
    seen: HashSet<String>,
    exceptions: HashSet<String>,
    services: Vec<(String, String, Vec<MethodDef>)>,
}

impl Idl {
    /// An empty schema in `package` (protobuf package and Thrift namespace).
    pub fn new(package: &str) -> Idl {
        Idl {
            package: package.to_owned(),
            defs: Vec::new(),
            seen: HashSet::new(),
            exceptions: HashSet::new(),
            services: Vec::new(),
        }
    }

    /// Adds `T` and every type it uses; returns how fields name it.
    pub fn add<T: crate::schema::Schema>(&mut self) -> TypeRef {
        T::idl(self)
    }

    /// Whether `name` still needs a definition; marks it as defined, so recursion stops.
    pub fn begin(&mut self, name: &str) -> bool {
        self.seen.insert(name.to_owned())
    }

    /// Defines a message (protobuf) / struct (Thrift).
    pub fn define_struct(&mut self, name: &str, doc: &str, fields: Vec<FieldDef>) {
        self.push(name, doc, Kind::Struct(fields));
    }

    /// Defines a message with a `oneof` (protobuf) / union (Thrift).
    pub fn define_union(&mut self, name: &str, doc: &str, fields: Vec<FieldDef>) {
        self.push(name, doc, Kind::Union(fields));
    }

    /// Defines a message for a tuple, named after its fields' protobuf types
    /// (`Tuple_string_int64`); tuples that protobuf spells alike but Thrift does not (`u16` and
    /// `u32` are both `uint32`, but `i32` and `i64` in Thrift) get a numbered name each.
    pub fn define_tuple(&mut self, fields: Vec<FieldDef>) -> TypeRef {
        let parts: Vec<String> = fields.iter().map(|f| ident_part(&f.ty.proto)).collect();
        let base = format!("Tuple_{}", parts.join("_"));
        let mut name = base.clone();
        for n in 2.. {
            match self.defs.iter().find(|def| def.name == name) {
                Some(Def { kind: Kind::Struct(existing), .. }) if *existing == fields => break,
                Some(_) => name = format!("{base}_{n}"),
                None => {
                    self.begin(&name);
                    self.define_struct(&name, "", fields);
                    break;
                }
            }
        }
        TypeRef::named(&name)
    }

    /// Names the exception that carries an error type Thrift cannot throw as it is (a string,
    /// an enum, a union): `exception Error_string { 1: string value }`, defined in the
    /// `.thrift` only. Protobuf carries the error itself.
    pub fn exception_wrapper(&mut self, error: TypeRef) -> TypeRef {
        let name = format!("Error_{}", ident_part(&error.thrift));
        if self.begin(&name) {
            let field = FieldDef::new("value", 1, error.clone());
            self.push(&name, "", Kind::Exception(field));
        }
        TypeRef::plain(error.proto, name)
    }

    /// Defines an enum.
    pub fn define_enum(&mut self, name: &str, doc: &str, values: Vec<(&str, i32)>) {
        self.push(name, doc, Kind::Enum(values.into_iter().map(|(n, v)| (n.to_owned(), v)).collect()));
    }

    /// Adds a service; its arguments and results must already be added with [`Idl::add`].
    pub fn add_service(&mut self, name: &str, doc: &str, methods: Vec<MethodDef>) {
        for method in &methods {
            if let Shape::Result(_, err) = &method.returns.shape {
                self.exceptions.insert(err.thrift.clone());
            }
        }
        self.services.push((name.to_owned(), doc.to_owned(), methods));
    }

    fn push(&mut self, name: &str, doc: &str, kind: Kind) {
        self.defs.push(Def { name: name.to_owned(), doc: doc.to_owned(), kind });
    }

    /// The schema as a proto3 `.proto` file.
    pub fn to_proto(&self) -> String {
        let mut out = format!("syntax = \"proto3\";\n\npackage {};\n", self.package);
        for def in self.defs.iter().filter(|def| !matches!(def.kind, Kind::Exception(_))) {
            out.push('\n');
            comment(&mut out, "//", &def.doc, "");
            match &def.kind {
                Kind::Struct(fields) => proto_message(&mut out, &def.name, fields),
                Kind::Union(fields) => {
                    // The oneof shares the message's namespace with its fields.
                    let mut oneof = "value".to_owned();
                    while fields.iter().any(|f| f.name == oneof) {
                        oneof.push('_');
                    }
                    let _ = writeln!(out, "message {} {{\n  oneof {oneof} {{", def.name);
                    for f in fields {
                        let _ = writeln!(out, "    {} {} = {};", f.ty.proto, f.name, f.tag);
                    }
                    out.push_str("  }\n}\n");
                }
                Kind::Enum(values) => {
                    let prefix = screaming(&def.name);
                    let _ = writeln!(out, "enum {} {{", def.name);
                    if !values.iter().any(|(_, v)| *v == 0) {
                        let _ = writeln!(out, "  {prefix}_UNSPECIFIED = 0;");
                    }
                    for (name, value) in values {
                        let _ = writeln!(out, "  {prefix}_{} = {value};", screaming(name));
                    }
                    out.push_str("}\n");
                }
                Kind::Exception(_) => {}
            }
        }
        for (service, doc, methods) in &self.services {
            let mut signatures = Vec::new();
            for m in methods {
                let request = match &m.request_stream {
                    Some(item) => format!("stream {}", self.proto_item(&mut out, &format!("{}_in", m.name), item)),
                    None => {
                        let args: Vec<FieldDef> = m
                            .args
                            .iter()
                            .enumerate()
                            .map(|(i, (n, t))| FieldDef::new(n, i as u32 + 1, t.clone()))
                            .collect();
                        out.push('\n');
                        proto_message(&mut out, &format!("{}_args", m.name), &args);
                        format!("{}_args", m.name)
                    }
                };
                let reply = match m.reply_stream {
                    true => format!("stream {}", self.proto_item(&mut out, &format!("{}_out", m.name), &m.returns)),
                    false => {
                        out.push('\n');
                        proto_message(&mut out, &format!("{}_result", m.name), &result_fields(&m.returns));
                        format!("{}_result", m.name)
                    }
                };
                signatures.push((m, request, reply));
            }
            out.push('\n');
            comment(&mut out, "//", doc, "");
            let _ = writeln!(out, "service {service} {{");
            for (m, request, reply) in signatures {
                comment(&mut out, "//", &m.doc, "  ");
                let _ = writeln!(out, "  rpc {}({request}) returns ({reply});", m.name);
            }
            out.push_str("}\n");
        }
        out
    }

    /// The message a stream item travels as: a struct is itself; any other value is the field
    /// of a wrapper message called `name` (`value = 1`, or `success`/`error` for a `Result`),
    /// which is written to `out`.
    fn proto_item(&self, out: &mut String, name: &str, item: &TypeRef) -> String {
        // Structs and unions are messages in `.proto` and encode as themselves (see `Schema`).
        let is_message =
            self.defs.iter().any(|def| def.name == item.proto && matches!(def.kind, Kind::Struct(_) | Kind::Union(_)));
        if is_message && item.shape == Shape::Plain {
            return item.proto.clone();
        }
        let fields = match &item.shape {
            Shape::Plain => vec![FieldDef::new("value", 1, item.clone())],
            _ => result_fields(item),
        };
        out.push('\n');
        proto_message(out, name, &fields);
        name.to_owned()
    }

    /// The schema as a `.thrift` file. A field, argument, enum value or method named with a
    /// word Thrift or a language it generates reserves (`class`, `list`, `None`, `int`, ...)
    /// gets a trailing `_` there (see [`thrift_name`]).
    pub fn to_thrift(&self) -> String {
        let mut out = format!("namespace py {0}\nnamespace rs {0}\n", self.package);
        for def in &self.defs {
            out.push('\n');
            comment(&mut out, "//", &def.doc, "");
            match &def.kind {
                Kind::Struct(fields) | Kind::Union(fields) => {
                    let keyword = match (&def.kind, self.exceptions.contains(&def.name)) {
                        (Kind::Union(_), _) => "union",
                        (_, true) => "exception",
                        _ => "struct",
                    };
                    let _ = writeln!(out, "{keyword} {} {{", def.name);
                    for f in fields.iter().filter(|f| f.ty.shape != Shape::Unit) {
                        let _ = writeln!(out, "  {}: {} {};", f.tag, f.ty.thrift, thrift_name(&f.name));
                    }
                    out.push_str("}\n");
                }
                Kind::Enum(values) => {
                    let _ = writeln!(out, "enum {} {{", def.name);
                    for (name, value) in values {
                        let _ = writeln!(out, "  {} = {value},", thrift_name(name));
                    }
                    out.push_str("}\n");
                }
                Kind::Exception(f) => {
                    let name = thrift_name(&f.name);
                    let _ = writeln!(out, "exception {} {{\n  {}: {} {name};\n}}", def.name, f.tag, f.ty.thrift);
                }
            }
        }
        for (service, doc, methods) in &self.services {
            out.push('\n');
            comment(&mut out, "//", doc, "");
            let _ = writeln!(out, "service {service} {{");
            for m in methods {
                if m.request_stream.is_some() || m.reply_stream {
                    let _ = writeln!(
                        out,
                        "  // {}: a streaming method, left out: Thrift has no streams; call it over this framework's protocol",
                        m.name
                    );
                    continue;
                }
                comment(&mut out, "//", &m.doc, "  ");
                let args: Vec<String> = m
                    .args
                    .iter()
                    .enumerate()
                    .map(|(i, (n, t))| format!("{}: {} {}", i + 1, t.thrift, thrift_name(n)))
                    .collect();
                let (returns, throws) = match &m.returns.shape {
                    Shape::Result(ok, err) => (ok.thrift.as_str(), format!(" throws (1: {} error)", err.thrift)),
                    _ => (m.returns.thrift.as_str(), String::new()),
                };
                // A Thrift result cannot be optional; its absence already means "no value".
                let returns = returns.strip_prefix("optional ").unwrap_or(returns);
                let oneway = if m.oneway { "oneway " } else { "" };
                let _ = writeln!(out, "  {oneway}{returns} {}({}){throws},", thrift_name(&m.name), args.join(", "));
            }
            out.push_str("}\n");
        }
        out
    }
}

/// Words the Apache Thrift compiler refuses as identifiers: its own keywords and those of the
/// languages it generates code for (read off `thrift --gen json` 0.17).
const THRIFT_RESERVED: &[&str] = &[
    "BEGIN",
    "END",
    "__CLASS__",
    "__DIR__",
    "__FILE__",
    "__FUNCTION__",
    "__LINE__",
    "__METHOD__",
    "__NAMESPACE__",
    "abstract",
    "alias",
    "and",
    "args",
    "as",
    "assert",
    "async",
    "begin",
    "binary",
    "bool",
    "break",
    "byte",
    "case",
    "catch",
    "class",
    "clone",
    "const",
    "continue",
    "cpp_include",
    "declare",
    "def",
    "default",
    "del",
    "delete",
    "do",
    "double",
    "dynamic",
    "elif",
    "else",
    "elseif",
    "elsif",
    "end",
    "enddeclare",
    "endfor",
    "endforeach",
    "endif",
    "endswitch",
    "endwhile",
    "ensure",
    "enum",
    "except",
    "exception",
    "exec",
    "extends",
    "finally",
    "float",
    "for",
    "foreach",
    "from",
    "function",
    "global",
    "goto",
    "i16",
    "i32",
    "i64",
    "i8",
    "if",
    "implements",
    "import",
    "in",
    "include",
    "inline",
    "instanceof",
    "interface",
    "is",
    "lambda",
    "list",
    "map",
    "module",
    "namespace",
    "native",
    "new",
    "next",
    "nil",
    "not",
    "oneway",
    "optional",
    "or",
    "package",
    "pass",
    "print",
    "private",
    "protected",
    "public",
    "raise",
    "redo",
    "register",
    "required",
    "rescue",
    "retry",
    "return",
    "self",
    "senum",
    "service",
    "set",
    "sizeof",
    "slist",
    "static",
    "string",
    "struct",
    "super",
    "switch",
    "synchronized",
    "then",
    "this",
    "throw",
    "throws",
    "transient",
    "try",
    "typedef",
    "undef",
    "union",
    "unless",
    "unsigned",
    "until",
    "use",
    "var",
    "virtual",
    "void",
    "volatile",
    "when",
    "while",
    "with",
    "xor",
    "xsd_all",
    "xsd_attrs",
    "xsd_nillable",
    "xsd_optional",
    "yield",
];

/// A field, argument, enum value or method name as the `.thrift` spells it: a word the Thrift
/// compiler reserves, or that its Python, Java, Go or C++ code would break on, gets a trailing
/// `_` (`list` is `list_`, `None` is `None_`), and so does a name that already is such a word
/// plus underscores (`list_` is `list__`), so that every name has its own spelling. Calls name
/// their method on the wire, so Thrift transports send and accept this spelling (and a server
/// accepts the bare name too).
pub fn thrift_name(name: &str) -> std::borrow::Cow<'_, str> {
    if reserved_stem(name) {
        format!("{name}_").into()
    } else {
        name.into()
    }
}

/// The name a `.thrift` spelling stands for: undoes [`thrift_name`].
pub fn from_thrift_name(name: &str) -> &str {
    match name.strip_suffix('_') {
        Some(stripped) if reserved_stem(stripped) => stripped,
        _ => name,
    }
}

/// Words the Thrift compiler accepts but that its generators copy into code where they are
/// keywords, making code that does not compile: Python, Java, Go and C++ (each checked by
/// compiling generated code, except Go's).
const TARGET_RESERVED: &[&str] = &[
    // Python
    "False",
    "None",
    "True",
    "await",
    "nonlocal",
    // Java
    "boolean",
    "char",
    "false",
    "final",
    "int",
    "long",
    "null",
    "short",
    "strictfp",
    "true",
    // Go
    "chan",
    "defer",
    "fallthrough",
    "func",
    "go",
    "range",
    "select",
    "type",
    // C++
    "alignas",
    "alignof",
    "and_eq",
    "asm",
    "auto",
    "bitand",
    "bitor",
    "char16_t",
    "char32_t",
    "char8_t",
    "co_await",
    "co_return",
    "co_yield",
    "compl",
    "concept",
    "const_cast",
    "consteval",
    "constexpr",
    "constinit",
    "decltype",
    "dynamic_cast",
    "explicit",
    "export",
    "extern",
    "friend",
    "mutable",
    "noexcept",
    "not_eq",
    "nullptr",
    "operator",
    "or_eq",
    "reinterpret_cast",
    "requires",
    "signed",
    "static_assert",
    "static_cast",
    "template",
    "thread_local",
    "typeid",
    "typename",
    "using",
    "wchar_t",
    "xor_eq",
];

/// Whether `name` is a reserved word followed by any number of underscores.
fn reserved_stem(name: &str) -> bool {
    let stem = name.trim_end_matches('_');
    THRIFT_RESERVED.contains(&stem) || TARGET_RESERVED.contains(&stem)
}

/// The fields of a method's protobuf result: `success = 1`, and `optional error = 2` for a
/// `Result`.
fn result_fields(returns: &TypeRef) -> Vec<FieldDef> {
    match &returns.shape {
        Shape::Unit => vec![],
        Shape::Plain => vec![FieldDef::new("success", 1, returns.clone())],
        Shape::Result(ok, err) => {
            let mut fields = vec![];
            if ok.shape != Shape::Unit {
                fields.push(FieldDef::new("success", 1, (**ok).clone()));
            }
            // Explicit presence: an error equal to its type's default (an empty string, a zero
            // enum) must still be sent, or it would read as success.
            fields.push(FieldDef::new("error", 2, TypeRef::optional((**err).clone())));
            fields
        }
    }
}

fn proto_message(out: &mut String, name: &str, fields: &[FieldDef]) {
    let _ = writeln!(out, "message {name} {{");
    for f in fields.iter().filter(|f| f.ty.shape != Shape::Unit) {
        let _ = writeln!(out, "  {} {} = {};", f.ty.proto, f.name, f.tag);
    }
    out.push_str("}\n");
}

fn comment(out: &mut String, marker: &str, doc: &str, indent: &str) {
    for line in doc.lines() {
        let _ = writeln!(out, "{indent}{marker} {line}");
    }
}

/// A type's name reduced to identifier characters: `map<string, int64>` → `map_string_int64`.
fn ident_part(ty: &str) -> String {
    let mut out = String::new();
    for c in ty.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

/// `LogRecord` → `LOG_RECORD`.
fn screaming(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 && !out.ends_with('_') {
            out.push('_');
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thrift_names_are_escaped_reversibly() {
        for (name, spelled) in
            [("list", "list_"), ("list_", "list__"), ("return_", "return__"), ("get", "get"), ("x_", "x_")]
        {
            assert_eq!(thrift_name(name), spelled);
            assert_eq!(from_thrift_name(spelled), name);
        }
    }

    #[test]
    fn tuples_spelled_alike_in_protobuf_but_not_in_thrift_get_names_of_their_own() {
        let mut idl = Idl::new("t");
        let narrow = idl.add::<(u16, String)>();
        let wide = idl.add::<(u32, String)>();
        assert_eq!(idl.add::<(u16, String)>(), narrow, "the same tuple is defined once");
        assert_ne!(narrow, wide);
        let thrift = idl.to_thrift();
        assert!(thrift.contains("struct Tuple_uint32_string {\n  1: i32 _1;"), "{thrift}");
        assert!(thrift.contains("struct Tuple_uint32_string_2 {\n  1: i64 _1;"), "{thrift}");
    }
}
