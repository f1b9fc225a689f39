//! Where messages go: `.eml` files in `mail.dir` (the default) or an SMTP server (plain,
//! STARTTLS or TLS), both through lettre.

use std::time::Duration;

use anyhow::Context;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{MailConfig, MailTransport, SmtpTls};

pub enum Transport {
    File(AsyncFileTransport<Tokio1Executor>),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(mail: &MailConfig) -> anyhow::Result<Transport> {
        match mail.transport {
            MailTransport::File => {
                std::fs::create_dir_all(&mail.dir).with_context(|| {
                    format!("key `mail.dir`: cannot create {}", mail.dir.display())
                })?;
                Ok(Transport::File(AsyncFileTransport::new(&mail.dir)))
            }
            MailTransport::Smtp => {
                let smtp = &mail.smtp;
                let tls = match smtp.tls {
                    SmtpTls::None => Tls::None,
                    SmtpTls::Starttls => Tls::Required(tls_parameters(mail)?),
                    SmtpTls::Tls => Tls::Wrapper(tls_parameters(mail)?),
                };
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                        .tls(tls)
                        .port(smtp.port)
                        .timeout(Some(Duration::from_secs(20)));
                if !smtp.username.is_empty() {
                    builder = builder.credentials(Credentials::new(
                        smtp.username.clone(),
                        smtp.password.clone(),
                    ));
                }
                Ok(Transport::Smtp(builder.build()))
            }
        }
    }

    pub async fn send(&self, message: Message) -> anyhow::Result<()> {
        match self {
            Transport::File(t) => {
                t.send(message).await.context("cannot write the message")?;
            }
            Transport::Smtp(t) => {
                t.send(message)
                    .await
                    .context("the SMTP server did not take the message")?;
            }
        }
        Ok(())
    }
}

/// The server's certificate must be valid for `mail.smtp.host` and signed by a CA the system
/// trusts, or by `mail.smtp.ca_file`.
fn tls_parameters(mail: &MailConfig) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(mail.smtp.host.clone());
    if let Some(ca) = &mail.smtp.ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("key `mail.smtp.ca_file`: cannot read {}", ca.display()))?;
        let cert = Certificate::from_pem(&pem).with_context(|| {
            format!(
                "key `mail.smtp.ca_file`: {} is not a PEM certificate",
                ca.display()
            )
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .context("key `mail.smtp`: cannot set up TLS")
}

/// Builds the message; an address that does not parse is an error naming it.
pub fn build(
    from: &str,
    to: &[String],
    subject: &str,
    body: String,
    high_priority: bool,
) -> anyhow::Result<Message> {
    let from: Mailbox = from
        .parse()
        .with_context(|| format!("`mail.from` `{from}` is not an address"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN);
    for addr in to {
        let mailbox: Mailbox = addr
            .parse()
            .with_context(|| format!("contact address `{addr}` is not an address"))?;
        builder = builder.to(mailbox);
    }
    if high_priority {
        builder = builder.header(XPriority).header(Importance);
    }
    builder.body(body).context("cannot build the message")
}

/// `X-Priority: 1 (Highest)`, understood by Outlook and most mail readers.
#[derive(Clone)]
struct XPriority;

impl Header for XPriority {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Priority")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(XPriority)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "1 (Highest)".to_string())
    }
}

/// `Importance: high` (RFC 2156).
#[derive(Clone)]
struct Importance;

impl Header for Importance {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Importance")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Importance)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "high".to_string())
    }
}
