//! The `#[processor]` attribute of `weir-sdk`: turns one Rust function into the `process`
//! and `describe` exports of a weir processor component. Misuse is reported as a compile
//! error pointing at the offending token. Use it through `weir_sdk::processor`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Expr, ExprArray, ExprLit, FnArg, ItemFn, Lit, LitBool, LitInt, LitStr, ReturnType, Type,
};

/// Makes a function the processor of this crate. See the `weir-sdk` crate documentation for
/// the options and the function's expected shape.
#[proc_macro_attribute]
pub fn processor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let original = TokenStream2::from(item.clone());
    // On a mistake, report it and keep the item as written, so the only message the author
    // sees is the one that points at the mistake.
    let fail = |err: syn::Error| {
        let err = err.to_compile_error();
        quote!(#err #[allow(dead_code)] #original).into()
    };
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    if let Err(err) = syn::parse::Parser::parse(parser, attr) {
        return fail(err);
    }
    let function = match syn::parse::<ItemFn>(item) {
        Ok(function) => function,
        Err(err) => {
            return fail(syn::Error::new(
                err.span(),
                "#[weir_sdk::processor] goes on a function: \
                 `fn process(state: In, ctx: &Context) -> Result<Out, Error>`",
            ));
        }
    };
    match expand(options, function) {
        Ok(tokens) => tokens.into(),
        Err(err) => fail(err),
    }
}

#[derive(Default)]
struct Options {
    seen: Vec<String>,
    name: Option<LitStr>,
    version: Option<LitStr>,
    description: Option<LitStr>,
    timeout_ms: Option<u64>,
    memory_bytes: Option<u64>,
    fuel: Option<u64>,
    output_bytes: Option<u64>,
    max_attempts: Option<u32>,
    exponential: Option<bool>,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    jitter: Option<bool>,
    retry_on: Vec<TokenStream2>,
    concurrency: Option<u32>,
    priority: Option<u32>,
    rate_limit_max: Option<u32>,
    rate_limit_per_ms: Option<u64>,
    replace_output: bool,
}

const KNOWN: &str = "name, version, description, timeout_ms, memory_bytes, fuel, output_bytes, \
    max_attempts, backoff, backoff_ms, max_backoff_ms, jitter, retry_on, concurrency, priority, \
    rate_limit_max, rate_limit_per_ms, output";

const KINDS: &[(&str, &str)] = &[
    ("validation", "Validation"),
    ("business", "Business"),
    ("not-found", "NotFound"),
    ("timeout", "Timeout"),
    ("resource", "Resource"),
    ("network", "Network"),
    ("configuration", "Configuration"),
    ("execution", "Execution"),
    ("cancelled", "Cancelled"),
    ("conflict", "Conflict"),
];

impl Options {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .ok_or_else(|| meta.error(format!("unknown option; expected one of: {KNOWN}")))?;
        if self.seen.contains(&key) {
            return Err(meta.error(format!("`{key}` is given twice")));
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "name" => {
                let lit: LitStr = meta.value()?.parse()?;
                check_name(&lit)?;
                self.name = Some(lit);
            }
            "version" => {
                let lit: LitStr = meta.value()?.parse()?;
                check_version(&lit)?;
                self.version = Some(lit);
            }
            "description" => self.description = Some(meta.value()?.parse()?),
            "timeout_ms" => self.timeout_ms = Some(positive(meta.value()?.parse()?)?),
            "memory_bytes" => self.memory_bytes = Some(positive(meta.value()?.parse()?)?),
            "fuel" => self.fuel = Some(positive(meta.value()?.parse()?)?),
            "output_bytes" => self.output_bytes = Some(positive(meta.value()?.parse()?)?),
            "max_attempts" => self.max_attempts = Some(positive(meta.value()?.parse()?)?),
            "backoff" => {
                let lit: LitStr = meta.value()?.parse()?;
                self.exponential = Some(match lit.value().as_str() {
                    "exponential" => true,
                    "fixed" => false,
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "backoff must be \"fixed\" or \"exponential\"",
                        ));
                    }
                });
            }
            "backoff_ms" => self.backoff_ms = Some(positive(meta.value()?.parse()?)?),
            "max_backoff_ms" => self.max_backoff_ms = Some(positive(meta.value()?.parse()?)?),
            "jitter" => self.jitter = Some(meta.value()?.parse::<LitBool>()?.value),
            "retry_on" => {
                let array: ExprArray = meta.value()?.parse()?;
                for element in array.elems {
                    let Expr::Lit(ExprLit {
                        lit: Lit::Str(kind),
                        ..
                    }) = &element
                    else {
                        return Err(syn::Error::new_spanned(
                            element,
                            "retry_on takes error kind names, e.g. [\"network\", \"conflict\"]",
                        ));
                    };
                    let Some((_, variant)) = KINDS.iter().find(|(name, _)| *name == kind.value())
                    else {
                        let names: Vec<_> = KINDS.iter().map(|(name, _)| *name).collect();
                        return Err(syn::Error::new(
                            kind.span(),
                            format!("unknown error kind; expected one of: {}", names.join(", ")),
                        ));
                    };
                    let variant = syn::Ident::new(variant, kind.span());
                    self.retry_on.push(quote!(::weir_sdk::ErrorKind::#variant));
                }
            }
            "concurrency" => self.concurrency = Some(positive(meta.value()?.parse()?)?),
            "priority" => self.priority = Some(meta.value()?.parse::<LitInt>()?.base10_parse()?),
            "rate_limit_max" => self.rate_limit_max = Some(positive(meta.value()?.parse()?)?),
            "rate_limit_per_ms" => self.rate_limit_per_ms = Some(positive(meta.value()?.parse()?)?),
            "output" => {
                let lit: LitStr = meta.value()?.parse()?;
                self.replace_output = match lit.value().as_str() {
                    "merge" => false,
                    "replace" => true,
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "output must be \"merge\" or \"replace\"",
                        ));
                    }
                };
            }
            _ => {
                return Err(meta.error(format!("unknown option `{key}`; expected one of: {KNOWN}")));
            }
        }
        Ok(())
    }
}

fn positive<N>(lit: LitInt) -> syn::Result<N>
where
    N: std::str::FromStr + PartialEq + From<u8>,
    N::Err: std::fmt::Display,
{
    let value: N = lit.base10_parse()?;
    if value == N::from(0) {
        return Err(syn::Error::new(lit.span(), "must be greater than zero"));
    }
    Ok(value)
}

fn check_name(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            "a processor name is lowercase letters, digits and `-`, starting with a letter \
             (it is also the plugin's file name, e.g. `add-ten` for add-ten.wasm)",
        ))
    }
}

fn check_version(lit: &LitStr) -> syn::Result<()> {
    let version = lit.value();
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<_> = core.split('.').collect();
    let valid = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            "version must be semver, e.g. \"1.2.0\"",
        ))
    }
}

fn expand(options: Options, function: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "a processor function cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "a processor function cannot be generic: name the concrete input and output types",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "a processor function cannot be unsafe",
        ));
    }
    let inputs: Vec<_> = sig.inputs.iter().collect();
    let with_context = match inputs.as_slice() {
        [FnArg::Typed(_)] => false,
        [FnArg::Typed(_), FnArg::Typed(second)] => {
            if !matches!(&*second.ty, Type::Reference(r) if r.mutability.is_none()) {
                return Err(syn::Error::new_spanned(
                    &second.ty,
                    "the second parameter must be `&weir_sdk::Context`",
                ));
            }
            true
        }
        [FnArg::Receiver(receiver), ..] => {
            return Err(syn::Error::new_spanned(
                receiver,
                "a processor is a free function, not a method",
            ));
        }
        _ => {
            return Err(syn::Error::new(
                if sig.inputs.is_empty() {
                    sig.paren_token.span.join()
                } else {
                    sig.inputs.span()
                },
                "a processor takes the state and, optionally, `&weir_sdk::Context`: \
                 `fn process(state: In, ctx: &Context) -> Result<Out, Error>`",
            ));
        }
    };
    let ReturnType::Type(_, output) = &sig.output else {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a processor returns `Result<Out, weir_sdk::Error>`",
        ));
    };
    let returns_result = matches!(&**output, Type::Path(p)
        if p.path.segments.last().is_some_and(|s| s.ident == "Result"));
    if !returns_result {
        return Err(syn::Error::new_spanned(
            output,
            "a processor returns `Result<Out, weir_sdk::Error>`",
        ));
    }

    let ident = &sig.ident;
    let span = sig.span();
    let call = if with_context {
        quote_spanned!(span=> |state, ctx: &::weir_sdk::Context| super::#ident(state, ctx))
    } else {
        quote_spanned!(span=> |state, _: &::weir_sdk::Context| super::#ident(state))
    };
    let name = match &options.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::env!("CARGO_PKG_NAME")),
    };
    let version = match &options.version {
        Some(lit) => quote!(#lit),
        None => quote!(::core::env!("CARGO_PKG_VERSION")),
    };
    let doc = doc_comment(&function);
    let description = match (&options.description, doc) {
        (Some(lit), _) => quote!(#lit),
        (None, Some(doc)) => {
            let doc = LitStr::new(&doc, Span::call_site());
            quote!(#doc)
        }
        (None, None) => quote!(::core::env!("CARGO_PKG_DESCRIPTION")),
    };
    let timeout_ms = opt(options.timeout_ms);
    let memory_bytes = opt(options.memory_bytes);
    let fuel = opt(options.fuel);
    let output_bytes = opt(options.output_bytes);
    let max_attempts = opt(options.max_attempts);
    let exponential = opt(options.exponential);
    let backoff_ms = opt(options.backoff_ms);
    let max_backoff_ms = opt(options.max_backoff_ms);
    let jitter = opt(options.jitter);
    let retry_on = &options.retry_on;
    let concurrency = opt(options.concurrency);
    let priority = opt(options.priority);
    let rate_limit_max = opt(options.rate_limit_max);
    let rate_limit_per_ms = opt(options.rate_limit_per_ms);
    let mode = if options.replace_output {
        quote!(::weir_sdk::__private::OutputMode::Replace)
    } else {
        quote!(::weir_sdk::__private::OutputMode::Merge)
    };

    Ok(quote! {
        #function

        #[doc(hidden)]
        mod __weir_processor_export {
            use ::weir_sdk::__private as __weir;

            struct Processor;

            const DESCRIBE: __weir::Describe = __weir::Describe {
                name: #name,
                version: #version,
                description: #description,
                timeout_ms: #timeout_ms,
                memory_bytes: #memory_bytes,
                fuel: #fuel,
                output_bytes: #output_bytes,
                max_attempts: #max_attempts,
                exponential: #exponential,
                backoff_ms: #backoff_ms,
                max_backoff_ms: #max_backoff_ms,
                jitter: #jitter,
                retry_on: &[#(#retry_on),*],
                concurrency: #concurrency,
                priority: #priority,
                rate_limit_max: #rate_limit_max,
                rate_limit_per_ms: #rate_limit_per_ms,
            };

            impl __weir::Guest for Processor {
                fn describe() -> __weir::ProcessorMetadata {
                    __weir::describe(&DESCRIBE)
                }

                fn process(
                    state: ::std::string::String,
                    context: __weir::ExecutionContext,
                ) -> ::core::result::Result<::std::string::String, __weir::ProcessorError> {
                    __weir::run(state, context, #mode, #call)
                }
            }

            ::weir_sdk::__private::bindings::__export_weir_processor!(Processor with_types_in ::weir_sdk::__private::bindings);
        }
    })
}

fn opt<T: quote::ToTokens>(value: Option<T>) -> TokenStream2 {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

fn doc_comment(function: &ItemFn) -> Option<String> {
    let lines: Vec<String> = function
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    // The first paragraph is the description; later paragraphs are for readers of the code.
    let first: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let text = first.join(" ");
    (!text.is_empty()).then_some(text)
}
