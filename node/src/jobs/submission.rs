//! A job's submission: its spec and nonce, signed by its submitter, so
//! that whoever holds it — the job's home members, an executor the home
//! placed it on — can check that this submitter asked for this job (what
//! an executor's `--trust` for native commands is judged by), though the
//! submitter itself may be gone.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use shoal_overlay::Key;
use shoal_resources::compute::JobSpec;

use super::protocol::check_spec;
use crate::addr::key_of_peer;

/// What the signature covers, before the job's key.
const CONTEXT: &[u8] = b"shoal job submission v1\n";

/// A job's spec, nonce and submitter, signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Submission {
    pub(crate) spec: JobSpec,
    pub(crate) nonce: u64,
    #[serde(with = "serde_bytes")]
    submitter: Vec<u8>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

impl Submission {
    /// `spec` with `nonce`, signed by `keypair`; and the job's key.
    pub(crate) fn sign(keypair: &Keypair, spec: JobSpec, nonce: u64) -> Option<(Key, Submission)> {
        let submitter = keypair.public().to_peer_id();
        let key = spec.key(&key_of_peer(&submitter)?, nonce);
        let signature = keypair.sign(&message(&key)).ok()?;
        Some((
            key,
            Submission {
                spec,
                nonce,
                submitter: submitter.to_bytes(),
                signature,
            },
        ))
    }

    /// The submitter.
    pub(crate) fn submitter(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.submitter).ok()
    }

    /// Whether this is `key`'s submission, signed by its submitter, and
    /// within the bounds of a spec: why not, if it is not.
    pub(crate) fn check(&self, key: &Key) -> Result<PeerId, String> {
        check_spec(&self.spec)?;
        let submitter = self.submitter().ok_or("the submitter is not a peer id")?;
        let submitter_key = key_of_peer(&submitter).ok_or("the submitter's peer id carries no key")?;
        if self.spec.key(&submitter_key, self.nonce) != *key {
            return Err("the job's key is not its spec, submitter and nonce".into());
        }
        let public = libp2p::identity::PublicKey::try_decode_protobuf(submitter.as_ref().digest())
            .map_err(|_| "the submitter's peer id carries no public key")?;
        if !public.verify(&message(key), &self.signature) {
            return Err("the submission's signature is not its submitter's".into());
        }
        Ok(submitter)
    }

    /// The submission's bytes (CBOR).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing CBOR into a Vec cannot fail.
        let _ = ciborium::into_writer(self, &mut out);
        out
    }

    /// Reads a submission back; `None` if the bytes are not one.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Submission> {
        ciborium::from_reader(bytes).ok()
    }
}

fn message(key: &Key) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(&key.to_bytes());
    message
}

/// The quorum's check of a job's payload: the submission of that key,
/// signed by its submitter (whoever sends it), who owns the key.
pub(crate) fn validate(key: &Key, _from: &PeerId, payload: &[u8]) -> Result<Option<Key>, String> {
    let submission = Submission::decode(payload).ok_or("the payload is not a job submission")?;
    submission
        .check(key)
        .map(|submitter| crate::addr::key_of_peer(&submitter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_resources::compute::JobKind;

    fn spec() -> JobSpec {
        JobSpec {
            kind: Some(JobKind::Native),
            args: vec!["/bin/true".into()],
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_submission_names_its_key_and_only_its_submitter_can_sign_it() {
        let keypair = Keypair::generate_ed25519();
        let (key, submission) = Submission::sign(&keypair, spec(), 7).unwrap();
        assert_eq!(submission.check(&key), Ok(keypair.public().to_peer_id()));
        let bytes = submission.encode();
        let submitter = crate::addr::key_of_peer(&keypair.public().to_peer_id());
        assert_eq!(validate(&key, &PeerId::random(), &bytes), Ok(submitter));
        // Another job's key.
        assert!(submission.check(&Key::of_content(b"other")).is_err());
        // Another spec under the same signature.
        let mut changed = submission.clone();
        changed.spec.args.push("x".into());
        assert!(changed.check(&key).is_err());
        // Someone else claims to be the submitter: the key no longer
        // matches; with the key recomputed, the signature does not.
        let mallory = Keypair::generate_ed25519();
        let mut forged = submission.clone();
        forged.submitter = mallory.public().to_peer_id().to_bytes();
        assert!(forged.check(&key).is_err());
        let forged_key = forged
            .spec
            .key(&key_of_peer(&mallory.public().to_peer_id()).unwrap(), 7);
        assert_eq!(
            forged.check(&forged_key),
            Err("the submission's signature is not its submitter's".into())
        );
        assert!(validate(&key, &PeerId::random(), b"not cbor").is_err());
    }
}
