#!/usr/bin/env python3
"""Independent implementation of the sealed-session test vector of docs/protocol.md section 8.

Written from the page alone (X25519, AES-GCM and Ed25519 from `cryptography`; the HPKE key
schedule of RFC 9180 by hand). Prints the values the `veil_protocol_vector` test in
seal/src/tests.rs pins:  python3 scripts/protocol_vector.py
"""
import hashlib, hmac, struct
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
H=bytes.fromhex
def ext(salt,ikm): return hmac.new(salt or b'\0'*32, ikm, hashlib.sha256).digest()
def exp(prk,info,L):
    out=b'';t=b'';i=1
    while len(out)<L:
        t=hmac.new(prk,t+info+bytes([i]),hashlib.sha256).digest();out+=t;i+=1
    return out[:L]
def lext(sid,salt,label,ikm): return ext(salt,b'HPKE-v1'+sid+label+ikm)
def lexp(sid,prk,label,info,L): return exp(prk,struct.pack('>H',L)+b'HPKE-v1'+sid+label+info,L)
kem_sid=b'KEM'+struct.pack('>H',0x20)
sid=b'HPKE'+struct.pack('>HHH',0x20,1,2)
raw=lambda k: k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
skR=X25519PrivateKey.from_private_bytes(H('497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d'))
pkR=raw(skR.public_key())
ikmE=H('2cd7c601cefb3d42a62b04b7a9041494c06c7843818e0ce28a8f704ae7ab20f9')
skE=X25519PrivateKey.from_private_bytes(lexp(kem_sid,lext(kem_sid,b'',b'dkp_prk',ikmE),b'sk',b'',32))
enc=raw(skE.public_key())
dh=skE.exchange(X25519PublicKey.from_public_bytes(pkR))
ss=lexp(kem_sid,lext(kem_sid,b'',b'eae_prk',dh),b'shared_secret',enc+pkR,32)
info=b'veil/v1 sealed request'+b'\x11'*32
ctx=b'\0'+lext(sid,b'',b'psk_id_hash',b'')+lext(sid,b'',b'info_hash',info)
secret=lext(sid,ss,b'secret',b'')
key=lexp(sid,secret,b'key',ctx,32); bn=lexp(sid,secret,b'base_nonce',ctx,12); xs=lexp(sid,secret,b'exp',ctx,32)
export=lambda c,L: lexp(sid,xs,b'sec',c,L)
key_id=hashlib.sha256(pkR).digest()[:8]
ct=AESGCM(key).encrypt(bn,struct.pack('>q',1790000000)+b'hello',b'veil/v1 request'+key_id)
rd=hashlib.sha256(b'veil/v1 request digest'+key_id+enc+ct).digest()
rk=export(b'veil/v1 response key',32); rn=export(b'veil/v1 response nonce',12)
def chunk(seq,p,fin):
    pad=struct.pack('>I',len(p))+p; pad+=b'\0'*(256-len(pad))
    n=bytes(a^b for a,b in zip(rn,b'\0'*4+struct.pack('>Q',seq)))
    return AESGCM(rk).encrypt(n,pad,rd+struct.pack('>Q',seq)+bytes([fin]))
c0=chunk(0,b'Hi',0);c1=chunk(1,b'!',0)
resp=hashlib.sha256(b'veil/v1 response digest'+struct.pack('>Q',2)+b'Hi'+struct.pack('>Q',1)+b'!').digest()
msg=hashlib.sha256(b'veil/receipt/v1'+rd+resp+b'\x22'*32+b'\x11'*32).digest()
sig=Ed25519PrivateKey.from_private_bytes(b'\x33'*32).sign(msg)
c2=chunk(2,sig,1)
for k,v in [('key_id',key_id),('encapsulated_key',enc),('ciphertext',ct),('request_digest',rd),('chunk0_sha256',hashlib.sha256(c0).digest()),('chunk1_sha256',hashlib.sha256(c1).digest()),('chunk2_sha256',hashlib.sha256(c2).digest()),('response_digest',resp),('receipt_message',msg),('receipt_signature',sig)]:
    print(k,v.hex())
